#!/usr/bin/env bash
# ensure-test-deps.sh: install the real servers the tests run against, from
# Debian's packages, when they are missing: prometheus (the metrics test
# scrapes the agent with it), postgresql (the Flask example stores its
# records in it), shellcheck (scripts/user-data.sh is checked with it),
# docker-registry (Dockerrun Image.Update pulls from it) and OpenSSH's
# server and client (the CLI reaches an agent through ssh, --host), and curl
# (asked for HTTP/2 against the HTTPS port).
# Idempotent; as another user it says what to do.
set -euo pipefail

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-test-deps: missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
  exit 0 # the tests that need them skip locally (and fail under CI=true)
fi
echo "ensure-test-deps: installing ${missing[*]} from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
# Debian's packages start a system Prometheus and sshd where systemd runs;
# the tests start their own on loopback and need nothing else. An sshd
# installed here would take logins on port 22: stop and disable it.
if [[ " ${missing[*]} " == *" openssh-server "* ]] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
fi
