package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/internal/loadgen"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/store"
)

// TestOperationsOutliveTheirClient: a deploy whose client goes away while
// the new version waits for its health check, and a setenv queued behind
// it whose client goes away as soon as the agent accepted it, both run to
// their end: v2 serves with the new environment, and not one request
// fails. Meanwhile status shows the deploy in flight at its step, and the
// setenv queued behind it; a rollback queued too, to a version that does
// not exist, fails in its turn, and an event says why.
func TestOperationsOutliveTheirClient(t *testing.T) {
	t.Parallel()
	h, app, port, load := servingUnderLoad(t, "outlive")

	// The deploy's client goes away once the health check waits.
	ctx, leave := context.WithCancel(context.Background())
	var (
		mu       sync.Mutex
		accepted *agent.Operation
	)
	_, lines, err := h.deployCtx(ctx, app, "v2", testenv.Bundle(t, "", "ENV APP_BOOT_DELAY=5s"), nil, func(m api.Message) {
		mu.Lock()
		defer mu.Unlock()
		if m.Operation != nil {
			accepted = m.Operation
		}
		if m.Step == agent.StepHealth {
			leave()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("the client that went away: %v\n%s", err, strings.Join(lines, "\n"))
	}
	if accepted == nil || accepted.Kind != "deploy" || accepted.Label != "v2" || accepted.App != app || accepted.Queued {
		t.Errorf("the stream said the agent accepted %+v, want the deploy of v2", accepted)
	}

	// status: the deploy in flight, at its step.
	st, err := h.client.Status(context.Background(), app)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.InFlight) != 1 || st.InFlight[0].Kind != "deploy" || st.InFlight[0].Label != "v2" || st.InFlight[0].Step != agent.StepHealth || st.InFlight[0].StepSince.IsZero() || st.InFlight[0].StartedAt.IsZero() {
		t.Fatalf("status in flight = %+v, want the deploy of v2 at health", st.InFlight)
	}

	// A setenv queued behind it, whose client leaves once it is queued.
	qctx, qleave := context.WithCancel(context.Background())
	var queued *agent.Operation
	_, err = h.client.SetEnv(qctx, app, api.EnvChange{Set: map[string]string{"GREETING": "hello"}}, func(m api.Message) {
		if m.Operation != nil {
			queued = m.Operation
			qleave()
		}
	})
	if !errors.Is(err, context.Canceled) || queued == nil || !queued.Queued || queued.Kind != "setenv" {
		t.Fatalf("the queued setenv: %v, accepted %+v", err, queued)
	}
	// And a rollback to a version that does not exist, which fails once
	// its turn comes, with no client to tell: an event tells.
	rctx, rleave := context.WithCancel(context.Background())
	_, err = h.client.Rollback(rctx, app, api.RollbackRequest{To: "nope"}, func(m api.Message) {
		if m.Operation != nil {
			rleave()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("the queued rollback: %v", err)
	}
	ops, err := h.client.Operations(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var mine []agent.Operation
	for _, op := range ops {
		if op.App == app {
			mine = append(mine, op)
		}
	}
	if len(mine) != 3 || mine[0].Kind != "deploy" || mine[0].Queued || mine[1].Kind != "setenv" || !mine[1].Queued || mine[2].Kind != "rollback" || !mine[2].Queued {
		t.Errorf("operations in flight = %+v, want the deploy, then the setenv and the rollback queued", mine)
	}

	// Both finish.
	testenv.Eventually(t, time.Minute, func() error {
		st, err := h.client.Status(context.Background(), app)
		switch {
		case err != nil:
			return err
		case len(st.InFlight) > 0:
			return fmt.Errorf("still in flight: %+v", st.InFlight)
		case st.Serving != "v2":
			return fmt.Errorf("%s serves", st.Serving)
		}
		return nil
	})
	testenv.Answered(t, load, "v2 hello", 50)
	stopLoad(t, load, "deploys whose clients went away")
	v, err := h.st.Version(app, "v2")
	if err != nil || v.Status != store.StatusServing || v.Error != "" {
		t.Errorf("v2 = %+v, %v; want serving", v, err)
	}
	if _, body := get(t, port, "/"); body != "v2 hello" {
		t.Errorf("GET / = %q", body)
	}
	hasEvent(t, h, app, "the rollback of "+app+" did not start, and its client had gone: version nope of "+app)
}

// servingUnderLoad starts an agent serving v1 of a new app, with a health
// check path, and a load on it that never retries.
func servingUnderLoad(t *testing.T, prefix string) (*harness, string, int, *loadgen.Load) {
	t.Helper()
	h := newHarness(t)
	app, port := testenv.Name(prefix), testenv.FreePort(t)
	h.mustDeploy(app, "v1", testenv.Bundle(t, ""), map[string]string{"port": fmt.Sprint(port), "health_path": "/healthz"})
	load := testenv.Load(t, port, 4)
	testenv.Answered(t, load, "v1 ", 50)
	return h, app, port, load
}

// TestAbortStopsAnOperationWithoutClient: a deploy whose client went away
// is stopped by `sprout abort` (the one way to stop it): the version that
// served keeps serving, the deploy is recorded as aborted, and nothing is
// left in flight.
func TestAbortStopsAnOperationWithoutClient(t *testing.T) {
	t.Parallel()
	h, app, _, load := servingUnderLoad(t, "outabort")

	ctx, leave := context.WithCancel(context.Background())
	h.deployCtx(ctx, app, "v2", testenv.Bundle(t, "", "ENV APP_BOOT_DELAY=60s"), nil, func(m api.Message) {
		if m.Operation != nil {
			leave()
		}
	})
	testenv.Eventually(t, 30*time.Second, func() error {
		if ops := h.ag.InFlightOf(app); len(ops) != 1 || ops[0].Step != agent.StepHealth {
			return fmt.Errorf("in flight: %+v, want the deploy at health", ops)
		}
		return nil
	})
	res, err := h.client.Abort(context.Background(), app)
	if err != nil || res.Aborted != "deploy" || res.Serving != "v1" {
		t.Fatalf("abort = %+v, %v", res, err)
	}
	if ops := h.ag.InFlightOf(app); len(ops) != 0 {
		t.Errorf("in flight after the abort: %+v", ops)
	}
	testenv.Answered(t, load, "v1 ", 50)
	stopLoad(t, load, "an aborted deploy without client")
	v, err := h.st.Version(app, "v2")
	if err != nil || v.Status != store.StatusFailed || v.Error != agent.ErrAborted.Error() {
		t.Errorf("v2 = %+v, %v; want failed, aborted", v, err)
	}
}

// TestAbortCancelsWhatIsQueued: behind a deploy whose new version waits
// for its health check wait a deploy of v3 and a setenv of bob's, both
// followed, and a rollback whose client went away. `sprout abort` stops
// the deploy and cancels the three, and says so: none of them starts, v1
// serves on with its environment, and not one request of a load that
// never retries fails. Each follower ends with the abort's reason;
// versions record the deploy of v3 as cancelled, events each
// cancellation, and no event says that a client had gone.
func TestAbortCancelsWhatIsQueued(t *testing.T) {
	t.Parallel()
	h, app, port, load := servingUnderLoad(t, "abortq")
	sock := filepath.Join(h.dataDir, "sprout.sock")
	inFlight := func(n int) {
		t.Helper()
		testenv.Eventually(t, 30*time.Second, func() error {
			if ops := h.ag.InFlightOf(app); len(ops) != n || ops[0].Step != agent.StepHealth {
				return fmt.Errorf("in flight: %+v, want %d, the deploy of v2 at health first", ops, n)
			}
			return nil
		})
	}

	ctx, leave := context.WithCancel(context.Background())
	h.deployCtx(ctx, app, "v2", testenv.Bundle(t, "", "ENV APP_BOOT_DELAY=60s"), nil, func(m api.Message) {
		if m.Operation != nil {
			leave()
		}
	})
	inFlight(1)

	v3, fast := make(chan error, 1), testenv.Bundle(t, "")
	go func() {
		_, _, err := h.deploy(app, "v3", fast, nil)
		v3 <- err
	}()
	inFlight(2)
	bob := api.NewClient(sock)
	bob.By = "bob@laptop"
	setenv := make(chan error, 1)
	go func() {
		_, err := bob.SetEnv(context.Background(), app, api.EnvChange{Set: map[string]string{"GREETING": "hello"}}, nil)
		setenv <- err
	}()
	inFlight(3)
	rctx, rleave := context.WithCancel(context.Background())
	h.client.Rollback(rctx, app, api.RollbackRequest{To: "v1"}, func(m api.Message) {
		if m.Operation != nil {
			rleave()
		}
	})
	inFlight(4)

	alice := api.NewClient(sock)
	alice.By = "alice@ops"
	res, err := alice.Abort(context.Background(), app)
	if err != nil || res.Aborted != "deploy" || res.Serving != "v1" || len(res.Cancelled) != 3 {
		t.Fatalf("abort = %+v, %v; want the deploy stopped and 3 cancelled", res, err)
	}
	var names []string
	for _, op := range res.Cancelled {
		names = append(names, op.Name()+" by "+op.By)
	}
	if want := []string{"deploy of v3 by ", "setenv by bob@laptop", "rollback to v1 by "}; !slices.Equal(names, want) {
		t.Errorf("the abort cancelled %q, want %q", names, want)
	}
	if ops := h.ag.InFlightOf(app); len(ops) != 0 {
		t.Errorf("in flight after the abort: %+v", ops)
	}
	const why = "cancelled by `sprout abort` while it was queued (by alice@ops): it never started"
	for name, ended := range map[string]chan error{"deploy of v3": v3, "setenv": setenv} {
		var oe *api.OpError
		if err := <-ended; !errors.As(err, &oe) || oe.Message != why {
			t.Errorf("the follower of the %s ended with %v, want %q", name, err, why)
		}
	}

	testenv.Answered(t, load, "v1 ", 50)
	stopLoad(t, load, "an abort of a deploy with three operations queued")
	if _, body := get(t, port, "/"); body != "v1 " {
		t.Errorf("GET / after the abort = %q, want v1 without the cancelled setenv's greeting", body)
	}
	if v, err := h.st.Version(app, "v2"); err != nil || v.Status != store.StatusFailed || v.Error != agent.ErrAborted.Error() {
		t.Errorf("v2 = %+v, %v; want failed, aborted", v, err)
	}
	if v, err := h.st.Version(app, "v3"); err != nil || v.Status != store.StatusFailed || v.Error != why || v.FailedStep != "" {
		t.Errorf("v3 = %+v, %v; want failed, cancelled while queued", v, err)
	}
	hasEvent(t, h, app, "the queued deploy of v3 (started at ")
	hasEvent(t, h, app, "the queued setenv (started by bob@laptop) was cancelled by `sprout abort` (by alice@ops); it never started")
	hasEvent(t, h, app, "the queued rollback to v1 (started at ")
	evs, err := h.client.Events(context.Background(), app, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if strings.Contains(e.Message, "its client had gone") {
			t.Errorf("an event says that a cancelled operation failed unheard: %s", e.Message)
		}
	}
}

// TestAbandonedUploadStartsNothing: a bundle whose upload breaks off
// before the agent has all of it starts no deploy: nothing is recorded,
// nothing is in flight, and the agent's log says why; a bundle over the
// limit is refused with the limit.
func TestAbandonedUploadStartsNothing(t *testing.T) {
	t.Parallel()
	h := newHarnessWith(t, func(c *agent.Config) { c.MaxUploadBytes = 1 << 20 })
	app := testenv.Name("abandon")
	pr, pw := io.Pipe()
	go func() {
		pw.Write(make([]byte, 64<<10))
		pw.CloseWithError(errors.New("the CLI went away"))
	}()
	if _, err := h.client.Deploy(context.Background(), app, url.Values{"label": {"v1"}}, pr, nil); err == nil {
		t.Fatal("a deploy of half a bundle succeeded")
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(h.logs.String(), "the upload of the bundle broke off after 65536 bytes") {
			return errors.New("the agent's log does not say that the upload broke off")
		}
		return nil
	})
	if _, err := h.ag.App(app); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the app of a broken upload: %v, want not found", err)
	}
	if ops := h.ag.InFlightOf(app); len(ops) != 0 {
		t.Errorf("in flight after a broken upload: %+v", ops)
	}

	_, err := h.client.Deploy(context.Background(), app, url.Values{"label": {"v1"}}, bytes.NewReader(make([]byte, 2<<20)), nil)
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusRequestEntityTooLarge || !strings.Contains(err.Error(), "larger than 1048576 bytes (limit bundle.max_upload_bytes)") {
		t.Errorf("a bundle over the limit: %v", err)
	}
}
