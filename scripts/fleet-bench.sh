#!/usr/bin/env bash
# fleet-bench.sh: run BenchmarkFleetRollout (e2e/fleet_bench_test.go), a
# Rolling rollout in batches of 25% across 5 and 20 agents on this machine,
# and print its figures against ../shared/TARGETS.md's, one line per fleet.
# The raw `go test` output is kept in .bench/fleet.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .bench
echo
echo "== fleet rollouts: Rolling, batches of 25% of the hosts, default stable_for (2s), 5 and 20 agents"
go test -run '^$' -bench BenchmarkFleetRollout -benchtime 1x -timeout 20m ./e2e/ | tee .bench/fleet.txt |
  awk '/^BenchmarkFleetRollout\// {
    for (i = 3; i < NF; i += 2) m[$(i + 1)] = $i
    split($1, name, "[=-]")
    printf "  %2d agents: rollout %.1f s in %d batches = %.2f x the target, batches x (one-host deploy %.2f s + 2 s) (target <= 1.00)\n",
      name[2], m["rollout-s"], m["batches"], m["target-ratio"], m["onehost-s"]
    printf "             next batch started %.2f s max, %.2f s mean after the one before turned stable (target <= 2 s)\n",
      m["gap-max-s"], m["gap-mean-s"]
    printf "             first batch all started after %.1f s (idle poll); slowest host per batch %.2f s; exit %.2f s after the last batch was stable\n",
      m["first-s"], m["batchdeploy-s"], m["tail-s"]
    next
  }
  /^(FAIL|panic|---|ok|PASS)/ || /_test\.go:/ { print "  " $0 }' ||
  { echo "fleet benchmark failed: its whole output is in .bench/fleet.txt" >&2; exit 1; }
