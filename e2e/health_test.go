package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// TestEnhancedHealth drives an app through Ok, 5xx errors and a failing
// health check, reading `sprout health` like a user, and expects the
// monitor to restart the container after three failed checks. The app's
// check fails only once the test says so, after the first two phases.
func TestEnhancedHealth(t *testing.T) {
	a := startAgent(t)
	a.env = append(a.env, "SPROUT_HEALTH_MONITOR_INTERVAL=300ms", "SPROUT_HEALTH_RESTART_AFTER=3")
	a.kill(9)
	a.start()
	app, port := testenv.Name("health"), testenv.FreePort(t)
	a.mustSprout("deploy", testenv.Bundle(t, ""), "--app", app, "--label", "v1",
		"--port", fmt.Sprint(port), "--health-path", "/healthz")

	report := func() agent.Report {
		t.Helper()
		var rs []agent.Report
		if err := json.Unmarshal([]byte(a.mustSprout("health", "--app", app, "--json")), &rs); err != nil || len(rs) != 1 {
			t.Fatalf("health --json: %v %v", rs, err)
		}
		return rs[0]
	}
	for range 40 {
		get(t, port)
	}
	// The proxy counts a request once its answer is sent, and the monitor
	// reads the container's memory every round.
	var r agent.Report
	testenv.Eventually(t, 20*time.Second, func() error {
		if r = report(); r.Status != "Ok" || r.Stats.Requests < 40 || r.Uptime <= 0 || r.Memory == 0 {
			return fmt.Errorf("want Ok, 40 requests, an uptime and memory: %+v", r)
		}
		return nil
	})
	if r.Stats.Share(2) != 1 {
		t.Errorf("healthy app: %+v", r)
	}
	table := a.mustSprout("health", "--app", app)
	for _, w := range []string{"STATUS", "Ok", "100.0%", "P99"} {
		if !strings.Contains(table, w) {
			t.Errorf("health table lacks %q:\n%s", w, table)
		}
	}

	// 5xx answers move the status, with the cause in words.
	for range 10 {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/status?code=500", port))
		if err == nil {
			resp.Body.Close()
		}
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		if r = report(); r.Status != "Severe" || !strings.Contains(strings.Join(r.Causes, ";"), "of requests failed with 5xx") {
			return fmt.Errorf("after 5xx: %s %v", r.Status, r.Causes)
		}
		return nil
	})

	// The health check fails from now on: the monitor sees it and
	// restarts the container after three failures.
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/healthz/fail", port), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /healthz/fail: %s", resp.Status)
	}
	var events string
	testenv.Eventually(t, 40*time.Second, func() error {
		if events = a.mustSprout("events", "--app", app); !strings.Contains(events, "after 3 failed health checks") {
			return fmt.Errorf("no restart after failing checks:\n%s", events)
		}
		return nil
	})
	if !strings.Contains(events, "of v1 failing its health check") {
		t.Errorf("no failing event before the restart:\n%s", events)
	}
	if r := report(); !strings.Contains(strings.Join(r.Causes, ";"), "restarted") && !strings.Contains(strings.Join(r.Causes, ";"), "health check failing") {
		t.Errorf("after the restart: %s %v", r.Status, r.Causes)
	}
	// The transitions are in the timeline.
	if events := a.mustSprout("events", "--app", app, "--limit", "200"); !strings.Contains(events, "health Ok → ") {
		t.Errorf("no health transition event:\n%s", events)
	}
}
