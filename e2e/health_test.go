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
// monitor to restart the container after three failed checks.
func TestEnhancedHealth(t *testing.T) {
	a := startAgent(t)
	a.env = append(a.env, "SPROUT_HEALTH_MONITOR_INTERVAL=300ms", "SPROUT_HEALTH_RESTART_AFTER=3")
	a.kill(9)
	a.start()
	app, port := testenv.Name("health"), testenv.FreePort(t)
	a.mustSprout("deploy", testenv.Bundle(t, "", "ENV APP_HEALTH_FAIL_AFTER=8s"), "--app", app, "--label", "v1",
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
	time.Sleep(time.Second) // a monitor round or two
	r := report()
	if r.Status != "Ok" || r.Stats.Requests < 40 || r.Stats.Share(2) != 1 || r.Uptime <= 0 || r.Memory == 0 {
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
	r = report()
	if r.Status != "Severe" || !strings.Contains(strings.Join(r.Causes, ";"), "of requests failed with 5xx") {
		t.Errorf("after 5xx: %s %v", r.Status, r.Causes)
	}

	// The health check starts failing 8 s after boot: the monitor sees it
	// and restarts the container after three failures.
	deadline := time.Now().Add(40 * time.Second)
	for {
		events := a.mustSprout("events", "--app", app)
		if strings.Contains(events, "after 3 failed health checks") {
			if !strings.Contains(events, "health check of v1 failing") {
				t.Errorf("no failing event before the restart:\n%s", events)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no restart after failing checks:\n%s", events)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if r := report(); !strings.Contains(strings.Join(r.Causes, ";"), "restarted") && !strings.Contains(strings.Join(r.Causes, ";"), "health check failing") {
		t.Errorf("after the restart: %s %v", r.Status, r.Causes)
	}
	// The transitions are in the timeline.
	if events := a.mustSprout("events", "--app", app, "--limit", "200"); !strings.Contains(events, "health Ok → ") {
		t.Errorf("no health transition event:\n%s", events)
	}
}
