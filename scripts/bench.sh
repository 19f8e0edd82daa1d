#!/usr/bin/env bash
# bench.sh: measure Sprout against its targets (../shared/TARGETS.md), side
# by side in one run, and print ratios.
#
#  1. throughput and p99 latency of the same container (tools/benchd, 100-byte
#     answers) reached directly, through Sprout's proxy, and through nginx
#     (Debian's, upstream keep-alive 64), in interleaved rounds of
#     `wrk -t2 -c64`, with the proxies' CPU time per request; then over TLS
#     with the same certificate in both: keep-alive requests (wrk), full
#     handshakes (tools/handshakes: a new connection and a full handshake
#     per request) and resumed ones (wrk with Connection: close, which
#     resumes its TLS session on every reconnect);
#  2. the agent's idle RSS with one app;
#  3. redeploys of an already-built image, CLI start to serving;
#  4. failed requests of a non-retrying client during consecutive swaps.
#
# Everything runs on loopback and the Docker bridge, bounded in time.
# Knobs: BENCH_ROUNDS (5), BENCH_SECONDS (8), BENCH_SWAPS (20), and
# BENCH_BASELINE, the path of another sprout binary (an earlier build, say)
# whose proxy joins the throughput rounds (plain and TLS) as "baseline",
# with its own agent and its own containers of the same image, so that a
# change is compared with what came before in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${BENCH_ROUNDS:-5}"
secs="${BENCH_SECONDS:-8}"
swaps="${BENCH_SWAPS:-20}"
work="$PWD/.bench"
port=18080
nginx_port=18081
export SPROUT_DATA_DIR="$work/data" SPROUT_SOCKET="$work/sprout.sock"
sprout="$PWD/bin/sprout"

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -eq 0 ]; then
    echo "installing $2 from Debian's packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
  fi
  command -v "$1" >/dev/null 2>&1
}
need wrk wrk || { echo "bench needs wrk (apt-get install wrk)" >&2; exit 1; }
have_nginx=1
need nginx nginx-light && need openssl openssl || { echo "nginx (or openssl, for the TLS rounds' certificate) not installed: comparing with the app directly only" >&2; have_nginx=0; }

rm -rf "$work"
mkdir -p "$work/benchd"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/benchd/benchd" ./tools/benchd
printf 'FROM scratch\nCOPY benchd /benchd\nEXPOSE 8080\nENTRYPOINT ["/benchd"]\n' >"$work/benchd/Dockerfile"

# The shared ports serve the TLS rounds' app by domain (localhost).
https_port=18443
SPROUT_PROXY_HTTP_PORT=18090 SPROUT_PROXY_HTTPS_PORT=$https_port "$sprout" agent --log-level warn >"$work/agent.log" 2>&1 &
agent_pid=$!
cleanup() {
  [ -n "${load_pid:-}" ] && kill "$load_pid" 2>/dev/null || true
  [ -n "${base_pid:-}" ] && kill "$base_pid" 2>/dev/null || true
  [ -n "${nginx_pid:-}" ] && kill "$nginx_pid" 2>/dev/null || true
  [ -n "${nginx_tls_pid:-}" ] && kill "$nginx_tls_pid" 2>/dev/null || true
  kill "$agent_pid" 2>/dev/null || true
  wait "$agent_pid" 2>/dev/null || true
  ids=$(docker ps -aq --filter label=io.sprout.app=bench)
  # shellcheck disable=SC2046,SC2086 # lists of container ids, split on purpose
  ids=$(echo $ids $(docker ps -aq --filter label=io.sprout.app=bench-base) $(docker ps -aq --filter label=io.sprout.app=bench4) $(docker ps -aq --filter label=io.sprout.app=benchtls) $(docker ps -aq --filter label=io.sprout.app=benchtls-base))
  [ -n "$ids" ] && docker rm -f $ids >/dev/null
  true
}
trap cleanup EXIT
for _ in $(seq 1 50); do [ -S "$SPROUT_SOCKET" ] && break; sleep 0.1; done

"$sprout" deploy "$work/benchd" --app bench --label r0 --port "$port" --health-path / >"$work/deploy-r0.txt"
backend=$("$sprout" status --app bench --json | grep -A1 '"targets"' | grep -oE '[0-9.]+:[0-9]+' | head -1)
[ -n "$backend" ] || { echo "could not find the container's address" >&2; exit 1; }

base_port=18082
if [ -n "${BENCH_BASELINE:-}" ]; then
  mkdir -p "$work/base"
  SPROUT_DATA_DIR="$work/base/data" SPROUT_SOCKET="$work/base/sprout.sock" SPROUT_METRICS_ADDRESS=127.0.0.1:0 \
    SPROUT_PROXY_HTTP_PORT=18091 SPROUT_PROXY_HTTPS_PORT=18445 "$BENCH_BASELINE" agent --log-level warn >"$work/base/agent.log" 2>&1 &
  base_pid=$!
  for _ in $(seq 1 50); do [ -S "$work/base/sprout.sock" ] && break; sleep 0.1; done
  SPROUT_DATA_DIR="$work/base/data" SPROUT_SOCKET="$work/base/sprout.sock" "$BENCH_BASELINE" deploy "$work/benchd" --app bench-base --label r0 --port "$base_port" --health-path / >"$work/base/deploy.txt"
fi

# nginx_conf DIR BACKEND LISTEN [SERVER LINES]: an nginx configuration
# in DIR that proxies to BACKEND with upstream keep-alive and an access
# log, and sends the app the same request Sprout's proxy sends (Host and
# X-Forwarded-For, -Host and -Proto), so both make the app do the same
# work.
nginx_conf() {
  mkdir -p "$1/logs"
  cat >"$1/nginx.conf" <<EOF
worker_processes auto;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log $1/logs/access.log;
  upstream app { server $2; keepalive 64; }
  server {
    listen $3;
    ${4:-}
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Host \$http_host;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
EOF
}

if [ "$have_nginx" = 1 ]; then
  nginx_conf "$work/nginx" "$backend" "127.0.0.1:$nginx_port"
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
  nginx_pid=$!
  sleep 0.5
fi

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# cpu_ticks PID...: user+system clock ticks of the processes (and, for
# nginx's master, its workers).
cpu_ticks() {
  local total=0 p
  for p in "$@"; do
    for q in $p $(pgrep -P "$p" 2>/dev/null); do
      [ -r "/proc/$q/stat" ] || continue
      total=$((total + $(awk '{print $14 + $15}' "/proc/$q/stat")))
    done
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)

# run NAME URL PIDS [WRK ARGS...]: one wrk run; appends "rps p99_ms
# cpu_us_per_req" to $work/NAME.txt
run() {
  local name=$1 url=$2 pids=$3 before after out rps p99 reqs cpu
  shift 3
  before=$(cpu_ticks $pids)
  out=$(wrk -t2 -c64 -d"${secs}s" --latency "$@" "$url")
  after=$(cpu_ticks $pids)
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1 == "99%" { v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v }' <<<"$out")
  errs=$(awk '/Socket errors|Non-2xx/ {print}' <<<"$out")
  cpu="-"
  if [ -n "$pids" ]; then cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }'); fi
  echo "$rps $p99 $cpu" >>"$work/$name.txt"
  [ -z "$errs" ] || echo "  $name: $errs" >&2
}

sleep 2
echo "== agent idle RSS with one app: $(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' /proc/$agent_pid/status) (target <= 20 MB)"
# The same image as an app of four instances, for the throughput rounds
# and the rolling deploy below (after the one-app RSS).
port4=18083
"$sprout" deploy "$work/benchd" --app bench4 --label r0 --port "$port4" --health-path / --instances 4 >"$work/deploy4-r0.txt"
echo
echo "== throughput: $rounds interleaved rounds of wrk -t2 -c64 -d${secs}s, backend $backend (container)"
for r in $(seq 1 "$rounds"); do
  run direct "http://$backend/" ""
  run sprout "http://127.0.0.1:$port/" "$agent_pid"
  run sprout4 "http://127.0.0.1:$port4/" "$agent_pid"
  [ -n "${base_pid:-}" ] && run baseline "http://127.0.0.1:$base_port/" "$base_pid"
  [ "$have_nginx" = 1 ] && run nginx "http://127.0.0.1:$nginx_port/" "$nginx_pid"
  echo "  round $r done"
done

col() { awk -v c="$2" '{print $c}' "$work/$1.txt" | median; }
printf '\n%-8s %12s %12s %18s\n' target "req/s" "p99 ms" "proxy CPU µs/req"
for t in direct sprout sprout4 baseline nginx; do
  [ -f "$work/$t.txt" ] || continue
  printf '%-8s %12.0f %12.2f %18s\n' "$t" "$(col $t 1)" "$(col $t 2)" "$(awk '{print $3}' "$work/$t.txt" | sort -n | sed -n "$(( (rounds+1)/2 ))p")"
done
s=$(col sprout 1); d=$(col direct 1)
awk -v s="$s" -v d="$d" 'BEGIN { printf "sprout / direct throughput: %.2f\n", s/d }'
awk -v s="$s" -v f="$(col sprout4 1)" 'BEGIN { printf "sprout, 4 instances / 1 instance throughput: %.2f (one container behind each)\n", f/s }'
if [ -n "${base_pid:-}" ]; then
  b=$(col baseline 1)
  awk -v s="$s" -v b="$b" 'BEGIN { printf "sprout / baseline throughput: %.2f\n", s/b }'
fi
if [ "$have_nginx" = 1 ]; then
  n=$(col nginx 1)
  awk -v s="$s" -v n="$n" 'BEGIN { printf "sprout / nginx throughput:  %.2f (target: >= 1.00)\n", s/n }'
fi


if [ "$have_nginx" = 1 ]; then
  echo
  echo "== TLS: the same certificate (ECDSA P-256, for localhost) in Sprout and nginx, one backend container"
  mkdir -p "$work/tls"
  (
    cd "$work/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" -keyout key.pem -out req.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out cert.pem 2>/dev/null
    chmod 600 key.pem
  )
  "$sprout" certs add --domain localhost --cert "$work/tls/cert.pem" --key "$work/tls/key.pem" >/dev/null
  "$sprout" deploy "$work/benchd" --app benchtls --label r0 --domain localhost --health-path / >"$work/deploy-tls.txt"
  tls_backend=$("$sprout" status --app benchtls --json | grep -A1 '"targets"' | grep -oE '[0-9.]+:[0-9]+' | head -1)
  if [ -n "${base_pid:-}" ]; then
    base_env=(SPROUT_DATA_DIR="$work/base/data" SPROUT_SOCKET="$work/base/sprout.sock")
    env "${base_env[@]}" "$BENCH_BASELINE" certs add --domain localhost --cert "$work/tls/cert.pem" --key "$work/tls/key.pem" >/dev/null
    env "${base_env[@]}" "$BENCH_BASELINE" deploy "$work/benchd" --app benchtls-base --label r0 --domain localhost --health-path / >"$work/base/deploy-tls.txt"
  fi
  nginx_tls_port=18444
  # nginx's session defaults are kept (ssl_session_cache none,
  # ssl_session_tickets on: TLS 1.3 resumes by ticket); the full-handshake
  # rows are full for both servers because their client keeps no session.
  nginx_conf "$work/nginx-tls" "$tls_backend" "127.0.0.1:$nginx_tls_port ssl" \
    "ssl_certificate $work/tls/cert.pem; ssl_certificate_key $work/tls/key.pem; ssl_protocols TLSv1.2 TLSv1.3;"
  nginx -p "$work/nginx-tls" -c "$work/nginx-tls/nginx.conf" -g 'daemon off;' &
  nginx_tls_pid=$!
  sleep 0.5
  # run_hs NAME URL PIDS: one run of tools/handshakes (32 workers);
  # appends "handshakes/s p99_ms cpu_us_per_handshake" to $work/NAME.txt
  run_hs() {
    local name=$1 url=$2 pids=$3 before after out
    before=$(cpu_ticks $pids)
    if ! out=$(bin/handshakes -url "$url" -cacert "$work/tls/ca.pem" -workers 32 -duration "${secs}s"); then
      echo "  $name: handshakes failed: $out" >&2
      return 1
    fi
    after=$(cpu_ticks $pids)
    awk -v t=$((after - before)) -v hz="$hz" -v name="$name" '
      NR == 1 { n = $1 }
      /^Handshakes\/sec/ { rate = $2 }
      /^Latency p99/ { p99 = $3 }
      /^Errors/ && $2 > 0 { print "  " name ": " $2 " errors" > "/dev/stderr" }
      /^  / { print "  " name ": " $0 > "/dev/stderr" }
      END { if (n > 0) printf "%s %s %.1f\n", rate, p99, t / hz * 1e6 / n }' <<<"$out" >>"$work/$name.txt"
  }
  tls_targets="sprout nginx"
  [ -n "${base_pid:-}" ] && tls_targets="sprout baseline nginx"
  tls_url() { case $1 in sprout) echo "https://localhost:$https_port/" ;; baseline) echo "https://localhost:18445/" ;; nginx) echo "https://localhost:$nginx_tls_port/" ;; esac; }
  tls_pid() { case $1 in sprout) echo "$agent_pid" ;; baseline) echo "$base_pid" ;; nginx) echo "$nginx_tls_pid" ;; esac; }
  # Keep-alive requests over TLS (wrk), full handshakes (tools/handshakes),
  # and resumed ones (wrk reconnecting: it resumes its session each time).
  for r in $(seq 1 "$rounds"); do
    for t in $tls_targets; do
      run "$t-tls" "$(tls_url $t)" "$(tls_pid $t)"
      run_hs "$t-full" "$(tls_url $t)" "$(tls_pid $t)"
      # "Connection: close" with its space: wrk drops a -H header that
      # has none after its colon (and would keep its connections).
      run "$t-resumed" "$(tls_url $t)" "$(tls_pid $t)" -H "Connection: close"
    done
    echo "  round $r done"
  done
  printf '\n%-16s %12s %12s %18s\n' target "req/s" "p99 ms" "proxy CPU µs/req"
  for kind in tls full resumed; do
    for t in $tls_targets; do
      printf '%-16s %12.0f %12.2f %18s\n' "$t-$kind" "$(col "$t-$kind" 1)" "$(col "$t-$kind" 2)" "$(awk '{print $3}' "$work/$t-$kind.txt" | sort -n | sed -n "$(( (rounds+1)/2 ))p")"
    done
  done
  # ratio A B WHAT [NOTE]: the median req/s of A over B's.
  ratio() { awk -v s="$(col "$1" 1)" -v n="$(col "$2" 1)" -v what="$3" -v note="${4:-}" 'BEGIN { printf "%-46s %.2f%s\n", what, s/n, note }'; }
  ratio sprout-tls nginx-tls "sprout / nginx keep-alive req/s over TLS:" " (target: >= 1.00)"
  ratio sprout-full nginx-full "sprout / nginx full TLS handshakes/s:" " (target: >= 1.00)"
  ratio sprout-resumed nginx-resumed "sprout / nginx resumed TLS handshakes/s:"
  if [ -n "${base_pid:-}" ]; then
    ratio sprout-tls baseline-tls "sprout / baseline keep-alive req/s over TLS:"
    ratio sprout-full baseline-full "sprout / baseline full TLS handshakes/s:"
    ratio sprout-resumed baseline-resumed "sprout / baseline resumed TLS handshakes/s:"
  fi
  kill "$nginx_tls_pid" 2>/dev/null || true
  nginx_tls_pid=
fi

echo
echo "== redeploys of the already-built image (CLI start -> serving)"
for i in 1 2 3; do
  start=$(date +%s%N)
  "$sprout" deploy "$work/benchd" --app bench --label "re$i" >"$work/deploy-re$i.txt"
  end=$(date +%s%N)
  total=$(( (end - start) / 1000000 ))
  health=$(sed -n 's/.*health \([0-9.]*\)\(m\?s\).*/\1 \2/p' "$work/deploy-re$i.txt" | awk '{ if ($2 == "s") print $1*1000; else print $1 }')
  moved=$(sed -n 's/.*now goes to .*, \(.*\) after the last passing check.*/\1/p' "$work/deploy-re$i.txt")
  echo "$total $health" >>"$work/redeploy.txt"
  printf '  re%d: %d ms in all, health wait %s ms, excluding it %d ms; traffic moved %s after the last passing check (target <= 25ms)\n' "$i" "$total" "$health" "$((total - ${health%.*}))" "$moved"
done
echo "  median excluding the app's health wait: $(awk '{ print $1 - $2 }' "$work/redeploy.txt" | median) ms (target <= 2000 ms)"

echo
echo "== a rolling deploy of 4 instances against a single-instance deploy of the same image"
single=$(awk '{ print $1 }' "$work/redeploy.txt" | median)
for policy in "Rolling --batch-size 1 --batch-size-type Fixed" "RollingWithAdditionalBatch --batch-size 50" "AllAtOnce"; do
  start=$(date +%s%N)
  # shellcheck disable=SC2086 # the policy's flags are words
  "$sprout" deploy "$work/benchd" --app bench4 --label "p$(date +%s%N)" --policy $policy >"$work/deploy4.txt"
  end=$(date +%s%N)
  ms=$(( (end - start) / 1000000 ))
  awk -v p="$policy" -v ms="$ms" -v s="$single" 'BEGIN { printf "  %-45s %6d ms = %.2f x the single-instance deploy (%d ms; target <= 2.00)\n", p, ms, ms/s, s }'
done

echo
echo "== $swaps consecutive swaps under load (16 connections, POSTs, no retries)"
bin/hammer -url "http://127.0.0.1:$port/" -workers 16 >"$work/swaps.txt" &
load_pid=$!
for i in $(seq 1 "$swaps"); do
  "$sprout" deploy "$work/benchd" --app bench --label "s$i" >/dev/null
done
sleep 0.5
kill -INT "$load_pid"
wait "$load_pid" || true
load_pid=
head -1 "$work/swaps.txt"
