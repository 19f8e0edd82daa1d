#!/usr/bin/env bash
# demo.sh: run an agent, deploy examples/hello v1, then deploy v2 (and roll
# back to v1) while a client that never retries sends requests the whole
# time, and print the deploy timings and the count of failed requests.
#
# Run it through `make demo`, which builds what it needs first.
# DEMO_PORT (default 8080) is the app's public port; DEMO_KEEP=1 leaves the
# agent and the app running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

port="${DEMO_PORT:-8080}"
work="$PWD/.demo"
export SPROUT_DATA_DIR="$work/data" SPROUT_SOCKET="$work/sprout.sock"
sprout="$PWD/bin/sprout"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if ss -ltn "( sport = :$port )" 2>/dev/null | grep -q LISTEN; then
  echo "port $port is in use; run with DEMO_PORT=another-port make demo" >&2
  exit 1
fi

mkdir -p "$work"
rm -rf "$work"/load-*.txt "$work/data"
"$sprout" agent --log-level warn >"$work/agent.log" 2>&1 &
agent_pid=$!
cleanup() {
  [ -n "${load_pid:-}" ] && kill "$load_pid" 2>/dev/null || true
  if [ "${DEMO_KEEP:-}" = "1" ]; then
    echo "the agent (pid $agent_pid) and the app on port $port keep running: SPROUT_SOCKET=$SPROUT_SOCKET $sprout status"
    return
  fi
  kill "$agent_pid" 2>/dev/null || true
  wait "$agent_pid" 2>/dev/null || true
  # The agent leaves apps running when it stops, as a daemon should; the
  # demo cleans up after itself.
  ids=$(docker ps -aq --filter label=io.sprout.app=hello-demo)
  [ -n "$ids" ] && docker rm -f $ids >/dev/null
  rm -rf "$work/data"
}
trap cleanup EXIT

for _ in $(seq 1 50); do [ -S "$SPROUT_SOCKET" ] && break; sleep 0.1; done
[ -S "$SPROUT_SOCKET" ] || { echo "the agent did not start; its log:" >&2; cat "$work/agent.log" >&2; exit 1; }

say "deploy v1 of examples/hello on port $port"
"$sprout" deploy examples/hello --app hello-demo --label v1 --port "$port" --health-path /healthz
curl -fsS "http://127.0.0.1:$port/"

under_load() {
  local name=$1; shift
  bin/hammer -url "http://127.0.0.1:$port/" -workers 16 >"$work/load-$name.txt" &
  load_pid=$!
  sleep 1
  "$@"
  sleep 1
  kill -INT "$load_pid"
  wait "$load_pid" || true
  load_pid=
  echo "-- requests during $name (16 connections, no retries):"
  cat "$work/load-$name.txt"
}

say "deploy v2 while 16 connections send requests"
under_load deploy-v2 "$sprout" deploy examples/hello --app hello-demo --label v2
curl -fsS "http://127.0.0.1:$port/"

say "roll back to v1 under the same load"
under_load rollback "$sprout" rollback --app hello-demo
curl -fsS "http://127.0.0.1:$port/"

say "status and versions"
"$sprout" status --app hello-demo
echo
"$sprout" versions --app hello-demo

failed=0
for f in "$work"/load-*.txt; do
  n=$(head -1 "$f" | sed -E 's/.* ([0-9]+) failed.*/\1/')
  failed=$((failed + n))
done
say "failed requests during the swaps: $failed"
[ "$failed" -eq 0 ]
