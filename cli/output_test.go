package cli

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/health"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cli -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestHealthTable(t *testing.T) {
	reports := []agent.Report{
		{
			App: "web", Serving: "v7", Status: health.Severe, RateRPS: 41.5,
			Causes: []string{"12% of requests failed with 5xx in the last 5m0s", "health check failing for 45s"},
			Stats: health.Stats{Span: 5 * time.Minute, Requests: 12450, Classes: [5]int64{0, 10956, 0, 0, 1494},
				P50: 3 * time.Millisecond, P90: 12 * time.Millisecond, P99: 180 * time.Millisecond},
			Uptime: 2*time.Hour + 3*time.Minute, Restarts: 2, CPU: 0.235, Memory: 48 << 20,
		},
		{App: "api", Status: health.NoData, Causes: []string{"no version is serving"}},
	}
	var out bytes.Buffer
	printHealth(&out, reports)
	golden(t, "health.golden", out.Bytes())
}

func TestSummary(t *testing.T) {
	got := summary(map[string]int64{"build": 1234, "unpack": 40, "health": 505, "swap": 0, "custom": 7})
	if want := "unpack 40ms, build 1.2s, health 505ms, swap 0ms, custom 7ms"; got != want {
		t.Errorf("summary = %q, want %q", got, want)
	}
}

func TestAgentLine(t *testing.T) {
	for secs, want := range map[float64]string{
		42.4:                 "sprout v2, pid 7, up 42s",
		192:                  "sprout v2, pid 7, up 3m12s",
		2*3600 + 5*60:        "sprout v2, pid 7, up 2h05m",
		3*86400 + 4*3600 + 9: "sprout v2, pid 7, up 3d04h",
	} {
		if got := agentLine(api.AgentInfo{Version: "v2", PID: 7, UptimeSeconds: secs}); got != want {
			t.Errorf("%v s: %q, want %q", secs, got, want)
		}
	}
}
