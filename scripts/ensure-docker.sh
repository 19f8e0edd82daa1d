#!/usr/bin/env bash
# ensure-docker.sh: make sure a Docker engine answers on this host.
#
# Idempotent: when `docker info` already works it does nothing. Otherwise, as
# root, it installs Debian's docker.io and starts dockerd in the background
# (logging to /var/log/sprout-dockerd.log). As another user it says what to do.
set -euo pipefail

log() { printf 'ensure-docker: %s\n' "$*" >&2; }

engine_up() { timeout 10 docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_up; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  log "no Docker engine is reachable and this is not root."
  log "fix: install and start Docker (sudo apt-get install -y docker.io && sudo systemctl start docker),"
  log "     then add yourself to the docker group, or run this as root."
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

if ! engine_up; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    log "starting docker with systemd"
    systemctl start docker || true
  fi
fi

if ! engine_up; then
  log "starting dockerd in the background (log: /var/log/sprout-dockerd.log)"
  # A stale pid file from an earlier, killed dockerd blocks a new one.
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  nohup dockerd >>/var/log/sprout-dockerd.log 2>&1 &
fi

for _ in $(seq 1 60); do
  if engine_up; then
    log "Docker engine is up ($(docker version --format '{{.Server.Version}}'))"
    exit 0
  fi
  sleep 1
done
log "dockerd did not answer within 60 s; see /var/log/sprout-dockerd.log"
tail -n 20 /var/log/sprout-dockerd.log >&2 || true
exit 1
