#!/usr/bin/env bash
# base-image.sh: make sure the engine has a debian:bookworm-slim image.
#
# When the engine already has it, nothing happens. Otherwise a pull is
# tried (bounded); when no registry answers, the image is made from
# Debian's own packages with debootstrap (minbase variant) and
# `docker import`, which takes about 30 s. Idempotent: a second run finds
# the image and does nothing.
#
#   IMAGE=debian:bookworm-slim MIRROR=http://deb.debian.org/debian scripts/base-image.sh
set -euo pipefail

IMAGE=${IMAGE:-debian:bookworm-slim}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
log() { echo "base-image: $*" >&2; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE is on this host ($(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c8-19))"
  exit 0
fi
if timeout 20 docker pull -q "$IMAGE" >/dev/null 2>&1; then
  log "pulled $IMAGE"
  exit 0
fi
log "$IMAGE is not on this host and no registry answered; making it with debootstrap from $MIRROR"
if [ "$(id -u)" -ne 0 ]; then
  log "debootstrap needs root: run sudo $0"
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq debootstrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
fi

root=$(mktemp -d /var/tmp/sprout-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
  tail -20 "$root.log" >&2
  log "debootstrap failed (full log: $root.log)"
  exit 1
}
rm -f "$root.log"
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
SOURCES
# As Docker's official slim images do: no caches, no man pages, and apt
# cleans up after itself.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/man/* "$root"/usr/share/doc/* "$root"/usr/share/info/*
echo 'APT::Install-Recommends "false";' >"$root/etc/apt/apt.conf.d/90sprout-no-recommends"
echo 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };' >"$root/etc/apt/apt.conf.d/90sprout-clean"

tar -C "$root" --numeric-owner -c . | docker import \
  --change 'CMD ["bash"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change "LABEL io.sprout.base=debootstrap io.sprout.suite=$SUITE" \
  - "$IMAGE" >/dev/null
log "made $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
