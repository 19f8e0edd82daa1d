package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// TestFailingInstanceLeavesTheRotation runs an app of three instances
// under load that never retries, and makes one instance's health check
// fail: the monitor takes that instance out of the proxy's rotation, names
// it in an event and in `sprout health`, restarts it after RestartAfter
// failed checks, and brings it back once it passes. No request fails.
func TestFailingInstanceLeavesTheRotation(t *testing.T) {
	t.Parallel()
	h := newHarnessWith(t, func(c *agent.Config) {
		c.MonitorInterval = 300 * time.Millisecond
		c.RestartAfter = 10
	})
	app, port := testenv.Name("inst"), testenv.FreePort(t)
	h.mustDeploy(app, "v1", testenv.Bundle(t, ""), map[string]string{"port": fmt.Sprint(port), "instances": "3", "health_path": "/healthz"})
	instancesOf(t, h, app, "v1", 3)
	ctx := context.Background()

	load := testenv.Load(t, port, 8)
	testenv.Answered(t, load, "v1 ", 50)

	// One instance, reached at its own address, not through the proxy.
	st, err := h.client.Status(ctx, app)
	if err != nil || len(st.Instances) != 3 {
		t.Fatalf("status: %+v %v", st, err)
	}
	sick := st.Instances[1]
	resp, err := http.Post("http://"+sick.Addr+"/healthz/fail", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /healthz/fail: %s", resp.Status)
	}

	// Out of the rotation, with the cause in `sprout health` and `status`.
	testenv.Eventually(t, 20*time.Second, func() error {
		in := h.px.InRotation(app)
		if len(in) != 2 || strings.Contains(strings.Join(in, " "), sick.Addr) {
			return fmt.Errorf("the proxy's rotation is %v, want the two instances but %s", in, sick.Addr)
		}
		rs, err := h.client.Health(ctx, app)
		if err != nil || len(rs) != 1 {
			return fmt.Errorf("health: %v %v", rs, err)
		}
		causes := strings.Join(rs[0].Causes, "; ")
		if !strings.Contains(causes, "instance "+sick.Name+": health check failing") {
			return fmt.Errorf("health causes %q name no failing %s", causes, sick.Name)
		}
		for _, ih := range rs[0].Instances {
			if ih.Name == sick.Name && (ih.InRotation || ih.LastCheck.Err == "" || ih.FailingSince.IsZero()) {
				return fmt.Errorf("health of the failing instance: %+v", ih)
			}
		}
		cur, _ := h.client.Status(ctx, app)
		for _, in := range cur.Instances {
			if in.Name == sick.Name && (in.Routed || in.Check != "failing") {
				return fmt.Errorf("status of the failing instance: %+v", in)
			}
		}
		return nil
	})
	testenv.Answered(t, load, "v1 ", 100)

	// Restarted after RestartAfter failed checks, and back.
	testenv.Eventually(t, 40*time.Second, func() error {
		if in := h.px.InRotation(app); len(in) != 3 {
			return fmt.Errorf("the proxy's rotation is %v, want 3 instances", in)
		}
		if rs, _ := h.client.Health(ctx, app); len(rs) != 1 || strings.Contains(strings.Join(rs[0].Causes, ";"), "health check failing") {
			return fmt.Errorf("health after the restart: %+v", rs)
		}
		return nil
	})
	testenv.Answered(t, load, "v1 ", 50)
	r := load.Stop()
	t.Logf("load while an instance failed and was restarted: %s", r)
	if r.Failed != 0 {
		t.Errorf("%d requests failed: %s", r.Failed, r)
	}

	evs, _ := h.client.Events(ctx, app, 50)
	var msgs []string
	for _, e := range evs {
		msgs = append(msgs, e.Message)
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{
		"instance " + sick.Name + " of v1 failing its health check",
		"; out of the rotation",
		"restarting instance " + sick.Name + " of v1 after 10 failed health checks",
		"instance " + sick.Name + " of v1 passes its health check again; back in the rotation",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no event %q in:\n%s", want, all)
		}
	}
	for _, other := range []agent.InstanceStatus{st.Instances[0], st.Instances[2]} {
		if strings.Contains(all, "instance "+other.Name+" ") {
			t.Errorf("an event names the healthy instance %s:\n%s", other.Name, all)
		}
	}
}
