#!/usr/bin/env bash
# user-data.sh: EC2 user data that makes a fresh instance a Sprout host
# serving one app, with no human in the loop. Paste it as the instance's
# user data (Amazon Linux 2023, Debian or Ubuntu) after setting the
# variables below, or run it as root with them in the environment.
#
# It installs Docker (unless an engine answers already), installs the
# sprout binary, writes /etc/sprout/agent.yaml from the variables and the
# instance's metadata (IMDSv2: region, instance id), installs and starts
# the systemd unit, and the agent then deploys the version the app's
# manifest in S3 names (`sprout publish` writes it) and follows it; or,
# with SPROUT_ENVIRONMENT, joins that environment under its instance id,
# serves the environment's last good version of every app, and takes part
# in its rollouts (`sprout deploy --env`, docs/fleet.md).
#
# Idempotent: a second run changes nothing that is already right (and
# says so). A run that brings a sprout binary other than the one the agent
# runs, or another agent.yaml, upgrades the running agent in place
# (`sprout agent upgrade`): no connection to the apps is refused, and if
# the new agent cannot start, the old one keeps serving and the script
# fails saying why. Without systemd (a container), the agent is started
# directly in the background instead (log: /var/log/sprout-agent.log).
#
#   SPROUT_BINARY_URL     https://.../sprout or s3://bucket/key (required)
#   SPROUT_BINARY_SHA256  its SHA-256, checked when set
#   SPROUT_ENVIRONMENT    s3://bucket/envs/<env>/: join this environment
#                         (then SPROUT_APP, SPROUT_MANIFEST, SPROUT_PORT
#                         are not used: the environment says what to serve)
#   SPROUT_APP            the app's name (required without SPROUT_ENVIRONMENT)
#   SPROUT_MANIFEST       s3://bucket/envs/<app>/current.json (idem)
#   SPROUT_PORT           the app's public port (default 80)
#   SPROUT_S3_ENDPOINT    an S3-compatible endpoint (default: AWS S3)
#   SPROUT_S3_PATH_STYLE  true for path-style buckets (default false)
#   SPROUT_IMDS_ENDPOINT  the instance metadata service (default http://169.254.169.254)
#   SPROUT_BOOTSTRAP_LOG  this script's log (default /var/log/sprout-bootstrap.log)
set -euo pipefail

SPROUT_BINARY_URL=${SPROUT_BINARY_URL:-}
SPROUT_BINARY_SHA256=${SPROUT_BINARY_SHA256:-}
SPROUT_ENVIRONMENT=${SPROUT_ENVIRONMENT:-}
SPROUT_APP=${SPROUT_APP:-}
SPROUT_MANIFEST=${SPROUT_MANIFEST:-}
SPROUT_PORT=${SPROUT_PORT:-80}
SPROUT_S3_ENDPOINT=${SPROUT_S3_ENDPOINT:-}
SPROUT_S3_PATH_STYLE=${SPROUT_S3_PATH_STYLE:-false}
SPROUT_IMDS_ENDPOINT=${SPROUT_IMDS_ENDPOINT:-http://169.254.169.254}
SPROUT_BOOTSTRAP_LOG=${SPROUT_BOOTSTRAP_LOG:-/var/log/sprout-bootstrap.log}

BIN=/usr/local/bin/sprout
CONF_DIR=/etc/sprout
UNIT=/etc/systemd/system/sprout-agent.service
SOCKET=/run/sprout/sprout.sock
# The agent writes its pid there, again after each upgrade (the unit's
# PIDFile).
PIDFILE=/run/sprout/agent.pid

# Everything goes to the log file and to the console (cloud-init shows it).
mkdir -p "$(dirname "$SPROUT_BOOTSTRAP_LOG")"
exec > >(tee -a "$SPROUT_BOOTSTRAP_LOG") 2>&1
log() { echo "sprout-bootstrap: $(date -u +%H:%M:%S) $*"; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (EC2 runs user data as root)"
[ -n "$SPROUT_BINARY_URL" ] || die "set SPROUT_BINARY_URL (https://.../sprout or s3://bucket/key)"
if [ -n "$SPROUT_ENVIRONMENT" ]; then
  case "$SPROUT_ENVIRONMENT" in s3://?*/*) ;; *) die "SPROUT_ENVIRONMENT must be s3://bucket/prefix/ (the environment's prefix)" ;; esac
  log "starting (environment $SPROUT_ENVIRONMENT)"
else
  [ -n "$SPROUT_APP" ] || die "set SPROUT_APP (the app this instance serves), or SPROUT_ENVIRONMENT to join an environment"
  case "$SPROUT_MANIFEST" in s3://?*/?*) ;; *) die "set SPROUT_MANIFEST to s3://bucket/key (written by sprout publish)" ;; esac
  case "$SPROUT_PORT" in '' | *[!0-9]*) die "SPROUT_PORT must be a port number" ;; esac
  log "starting (app $SPROUT_APP, manifest $SPROUT_MANIFEST)"
fi

# --- packages ---------------------------------------------------------
# shellcheck source=/dev/null
. /etc/os-release
case "${ID:-}:${ID_LIKE:-}" in
  amzn:* | *:*fedora* | *:*rhel*) pkg=dnf ;;
  debian:* | ubuntu:* | *:*debian*) pkg=apt ;;
  *) die "unsupported system ${PRETTY_NAME:-unknown}: this script knows Amazon Linux 2023, Debian and Ubuntu" ;;
esac
install_pkgs() {
  if [ "$pkg" = apt ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
  else
    dnf install -y -q "$@" >/dev/null
  fi
}
need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v git >/dev/null 2>&1 || need+=(git)
[ -e /etc/ssl/certs/ca-certificates.crt ] || [ -e /etc/pki/tls/certs/ca-bundle.crt ] || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  install_pkgs "${need[@]}"
else
  log "curl, git and CA certificates are installed"
fi

have_systemd() { [ -d /run/systemd/system ]; }
engine_up() { curl -sf --max-time 3 --unix-socket /var/run/docker.sock http://localhost/_ping >/dev/null 2>&1; }
if engine_up; then
  log "a Docker engine answers on /var/run/docker.sock"
else
  if ! command -v dockerd >/dev/null 2>&1; then
    log "installing Docker"
    if [ "$pkg" = apt ]; then install_pkgs docker.io; else install_pkgs docker; fi
  fi
  if have_systemd; then
    systemctl enable --now docker >/dev/null
  else
    log "no systemd: starting dockerd in the background"
    nohup dockerd >>/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do engine_up && break; sleep 1; done
  engine_up || die "the Docker engine did not start (see /var/log/dockerd.log or journalctl -u docker)"
  log "Docker engine is up"
fi

# --- instance metadata (IMDSv2) ------------------------------------------
token=$(curl -sf --max-time 5 -X PUT "$SPROUT_IMDS_ENDPOINT/latest/api/token" \
  -H "X-aws-ec2-metadata-token-ttl-seconds: 300") || die "no instance metadata service at $SPROUT_IMDS_ENDPOINT (IMDSv2 token request failed)"
imds() { curl -sf --max-time 5 -H "X-aws-ec2-metadata-token: $token" "$SPROUT_IMDS_ENDPOINT/latest/meta-data/$1"; }
region=$(imds placement/region) || die "cannot read the region from the instance metadata"
instance_id=$(imds instance-id) || die "cannot read the instance id from the instance metadata"
log "instance $instance_id in $region"

# --- the binary ----------------------------------------------------------
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
case "$SPROUT_BINARY_URL" in
  s3://*)
    command -v aws >/dev/null 2>&1 || install_pkgs awscli
    aws s3 cp --only-show-errors --region "$region" ${SPROUT_S3_ENDPOINT:+--endpoint-url "$SPROUT_S3_ENDPOINT"} "$SPROUT_BINARY_URL" "$tmp/sprout" ;;
  https://* | http://*)
    curl -sfL --retry 5 --retry-delay 2 -o "$tmp/sprout" "$SPROUT_BINARY_URL" || die "cannot download $SPROUT_BINARY_URL" ;;
  *) die "SPROUT_BINARY_URL must be https://... or s3://bucket/key" ;;
esac
if [ -n "$SPROUT_BINARY_SHA256" ]; then
  echo "$SPROUT_BINARY_SHA256  $tmp/sprout" | sha256sum -c --quiet - || die "the binary's SHA-256 is not $SPROUT_BINARY_SHA256"
fi
chmod 0755 "$tmp/sprout"
"$tmp/sprout" --version >/dev/null || die "the downloaded file is not a sprout binary for this machine"
if cmp -s "$tmp/sprout" "$BIN"; then
  log "$BIN is up to date ($("$BIN" --version))"
else
  # Replaced by a rename, never rewritten: a running agent keeps its own
  # binary until it upgrades to this one.
  install -m 0755 "$tmp/sprout" "$BIN.new"
  mv -f "$BIN.new" "$BIN"
  log "installed $BIN ($("$BIN" --version))"
fi

# --- configuration -------------------------------------------------------
changed=0
# put FILE MODE: writes stdin to FILE when it differs; sets changed=1.
put() {
  cat >"$tmp/new"
  if cmp -s "$tmp/new" "$1"; then
    log "$1 is up to date"
  else
    install -D -m "$2" "$tmp/new" "$1"
    changed=1
    log "wrote $1"
  fi
}
if [ -n "$SPROUT_ENVIRONMENT" ]; then
  serves="environment: $SPROUT_ENVIRONMENT
host_id: $instance_id"
else
  serves="apps:
  - name: $SPROUT_APP
    manifest: $SPROUT_MANIFEST
    port: $SPROUT_PORT"
fi
changed=0
put "$CONF_DIR/agent.yaml" 0644 <<YAML
# Written by user-data.sh for instance $instance_id ($region); a new run
# rewrites it. Every key: https://github.com/sprout-paas/sprout/blob/main/configs/agent.yaml
data_dir: /var/lib/sprout
socket: $SOCKET
log_format: json
s3:
  region: $region
  endpoint: "$SPROUT_S3_ENDPOINT"
  path_style: $SPROUT_S3_PATH_STYLE
$serves
YAML
conf_changed=$changed
# The AWS SDK in the agent finds the instance role's credentials through
# the same metadata service.
changed=0
put "$CONF_DIR/agent.env" 0644 <<ENV
AWS_REGION=$region
AWS_EC2_METADATA_SERVICE_ENDPOINT=$SPROUT_IMDS_ENDPOINT
ENV
# A new process inherits the running agent's environment: a new one needs
# a restart.
restart=$changed

# agent_pid prints the pid of the agent that serves, if one runs.
agent_pid() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}
# outdated: the running agent's binary is not $BIN, or agent.yaml changed.
outdated() {
  local pid
  pid=$(agent_pid) || return 0
  [ "$conf_changed" = 1 ] || ! cmp -s "$BIN" "/proc/$pid/exe"
}
# upgrade: the running agent starts $BIN and hands it its listening
# sockets and state; it keeps serving when that fails, and says why.
upgrade() {
  log "upgrading the running agent (pid $(agent_pid)) in place to $("$BIN" --version)"
  "$BIN" --socket "$SOCKET" agent upgrade ||
    die "the agent could not upgrade itself (above); it keeps serving its version: fix and run this again, or restart it"
  log "upgraded the agent in place: $("$BIN" --socket "$SOCKET" version | grep '^agent:')"
}

# --- the agent -----------------------------------------------------------
if have_systemd; then
  changed=0
  put "$UNIT" 0644 <<'UNIT'
# systemd unit for the Sprout agent. Install as
# /etc/systemd/system/sprout-agent.service, then:
#   systemctl daemon-reload && systemctl enable --now sprout-agent
[Unit]
Description=Sprout deploy agent
Documentation=https://github.com/sprout-paas/sprout
After=docker.service network-online.target
Wants=network-online.target
Requires=docker.service

[Service]
# Optional environment (AWS_REGION, AWS_EC2_METADATA_SERVICE_ENDPOINT, ...).
EnvironmentFile=-/etc/sprout/agent.env
ExecStart=/usr/local/bin/sprout agent --config /etc/sprout/agent.yaml --pid-file /run/sprout/agent.pid
# `systemctl reload sprout-agent` upgrades the agent in place, without a
# gap, to the binary now at /usr/local/bin/sprout (as `sprout agent
# upgrade` does, which also says how it went). The new process writes its
# pid to the PIDFile, which systemd reads when the old one exits, and
# follows as the service's main process.
ExecReload=/bin/kill -HUP $MAINPID
PIDFile=/run/sprout/agent.pid
Restart=always
RestartSec=2
# Apps keep running when the agent stops; only the agent's process is
# signalled.
KillMode=process
TimeoutStopSec=20
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
UNIT
  if [ "$changed" = 1 ]; then restart=1; fi
  systemctl daemon-reload
  systemctl enable sprout-agent >/dev/null 2>&1
  if [ "$restart" = 1 ] || ! systemctl is-active --quiet sprout-agent; then
    systemctl restart sprout-agent
    log "started the sprout-agent service"
  elif outdated; then
    upgrade
  else
    log "the sprout-agent service runs with this configuration; nothing to do"
  fi
else
  # No systemd (a container): run the agent directly, in its own session,
  # with the same environment file and pid file.
  if pid=$(agent_pid) && [ "$restart" = 0 ]; then
    if outdated; then
      upgrade
    else
      log "the agent (pid $pid) runs with this configuration; nothing to do"
    fi
  else
    if pid=$(agent_pid); then
      kill "$pid"
      for _ in $(seq 1 40); do agent_pid >/dev/null || break; sleep 0.5; done
    fi
    mkdir -p "$(dirname "$PIDFILE")"
    (
      set -a
      # shellcheck source=/dev/null
      . "$CONF_DIR/agent.env"
      set +a
      exec setsid "$BIN" agent --config "$CONF_DIR/agent.yaml" --pid-file "$PIDFILE" >>/var/log/sprout-agent.log 2>&1 </dev/null
    ) &
    echo $! >"$PIDFILE"
    log "no systemd: started the agent directly (pid $(cat "$PIDFILE"), log /var/log/sprout-agent.log)"
  fi
fi

for _ in $(seq 1 60); do [ -S "$SOCKET" ] && "$BIN" --socket "$SOCKET" apps >/dev/null 2>&1 && break; sleep 1; done
"$BIN" --socket "$SOCKET" apps >/dev/null 2>&1 || die "the agent does not answer on $SOCKET (see its log)"
if [ -n "$SPROUT_ENVIRONMENT" ]; then
  log "the agent answers; as host $instance_id of $SPROUT_ENVIRONMENT it serves the environment's last good versions and takes part in its rollouts (sprout status --env $SPROUT_ENVIRONMENT)"
else
  log "the agent answers; it deploys what $SPROUT_MANIFEST names and follows it (sprout status --app $SPROUT_APP)"
fi
