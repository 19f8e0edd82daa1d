package agent

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/store"
)

// TestAbortBeforeAndAfterTheRolloutStands: an abort before the rollout
// stands cancels its context with ErrAborted, and the rollout then cannot
// stand; once it stands, an abort is refused with the way back.
func TestAbortBeforeAndAfterTheRolloutStands(t *testing.T) {
	for _, op := range []string{"deploy", "scale"} {
		ctx, cancel := context.WithCancelCause(context.Background())
		r := &runningRollout{info: Operation{Kind: op}, cancel: cancel}
		a := &Agent{rollouts: map[string]*runningRollout{"web": r}}
		if err := r.abort("web"); err != nil {
			t.Fatalf("abort of a %s in flight: %v", op, err)
		}
		if !errors.Is(context.Cause(ctx), ErrAborted) {
			t.Errorf("the %s's context ended with %v, want ErrAborted", op, context.Cause(ctx))
		}
		if err := a.stand("web"); !errors.Is(err, ErrAborted) {
			t.Errorf("an aborted %s stands: %v", op, err)
		}
	}

	for op, fix := range map[string]string{"deploy": "`sprout rollback --app web`", "scale": "`sprout scale --app web N`"} {
		ctx, cancel := context.WithCancelCause(context.Background())
		r := &runningRollout{info: Operation{Kind: op}, cancel: cancel}
		a := &Agent{rollouts: map[string]*runningRollout{"web": r}}
		if err := a.stand("web"); err != nil {
			t.Fatalf("the %s cannot stand: %v", op, err)
		}
		err := r.abort("web")
		if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "too late") || !strings.Contains(err.Error(), fix) {
			t.Errorf("abort of a standing %s: %v; want too late, with %s", op, err, fix)
		}
		if ctx.Err() != nil {
			t.Errorf("a standing %s was cancelled", op)
		}
	}
	if err := (&Agent{rollouts: map[string]*runningRollout{}}).stand("web"); err != nil {
		t.Errorf("a recovery (no rollout registered) cannot stand: %v", err)
	}
}

// lockingAgent is an agent with only what the app locks and the record
// of operations need, on a store in a temporary directory.
func lockingAgent(t *testing.T) *Agent {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &Agent{store: st, log: slog.New(slog.DiscardHandler), locks: map[string]chan struct{}{}, busy: map[string]int{}, rollouts: map[string]*runningRollout{}}
}

// queuedRollout asks for web's lock as a rollout of kind (label) started
// by by, and reports how its wait ended on the channel it returns; its
// cancelled hook reports on hooked.
func queuedRollout(a *Agent, kind, label, by string, hooked chan<- error) <-chan error {
	ended := make(chan error, 1)
	go func() {
		l := rolloutLock{app: "web", kind: kind, label: label, cancelled: func(err error) { hooked <- err }}
		_, unlock, err := a.lockRollout(WithStartedBy(context.Background(), by), l, nopProgress{})
		if err == nil {
			unlock()
		}
		ended <- err
	}()
	return ended
}

// waitQueued waits until n operations of web are queued.
func waitQueued(t *testing.T, a *Agent, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		queued := 0
		for _, op := range a.InFlightOf("web") {
			if op.Queued {
				queued++
			}
		}
		if queued == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d operations of web are queued, want %d: %+v", queued, n, a.InFlightOf("web"))
		}
	}
}

// TestAbortCancelsTheQueued: an abort stops the rollout running and
// cancels each one queued behind it, which never gets the app's lock and
// ends with ErrCancelled (saying who aborted), its cancelled hook called
// before Abort returns; the abort says what it cancelled, events record
// it, and nothing is left in flight.
func TestAbortCancelsTheQueued(t *testing.T) {
	a := lockingAgent(t)
	ctx, unlock, err := a.lockRollout(WithStartedBy(context.Background(), "carol@ci"), rolloutLock{app: "web", kind: "deploy", label: "v8"}, nopProgress{})
	if err != nil {
		t.Fatal(err)
	}
	hooked := make(chan error, 2)
	rollback := queuedRollout(a, "rollback", "v7", "bob@laptop", hooked)
	waitQueued(t, a, 1)
	setenv := queuedRollout(a, "setenv", "", "", hooked)
	waitQueued(t, a, 2)
	go func() {
		<-ctx.Done() // the running rollout replays its journal
		if !errors.Is(context.Cause(ctx), ErrAborted) {
			t.Errorf("the running rollout ended with %v, want ErrAborted", context.Cause(ctx))
		}
		unlock()
	}()

	res, err := a.Abort(WithStartedBy(context.Background(), "alice@ops"), "web")
	if err != nil || res.Running != "deploy" || len(res.Cancelled) != 2 {
		t.Fatalf("abort = %+v, %v; want the deploy stopped, two cancelled", res, err)
	}
	if got := res.cancelledText(); !strings.HasPrefix(got, "the rollback to v7 (started by bob@laptop), the setenv (started at ") {
		t.Errorf("cancelled: %s", got)
	}
	if len(hooked) != 2 {
		t.Errorf("%d cancelled hooks ran before Abort returned, want 2", len(hooked))
	}
	for name, ended := range map[string]<-chan error{"rollback": rollback, "setenv": setenv} {
		err := <-ended
		if !errors.Is(err, ErrCancelled) || err.Error() != "cancelled by `sprout abort` while it was queued (by alice@ops): it never started" {
			t.Errorf("the queued %s ended with %v, want ErrCancelled by alice@ops", name, err)
		}
	}
	if ops := a.InFlightOf("web"); len(ops) != 0 {
		t.Errorf("in flight after the abort: %+v", ops)
	}
	evs, err := a.store.Events("web", 10)
	if err != nil {
		t.Fatal(err)
	}
	var said []string
	for _, e := range evs {
		said = append(said, e.Message)
	}
	for _, want := range []string{
		"the queued rollback to v7 (started by bob@laptop) was cancelled by `sprout abort` (by alice@ops); it never started",
		"abort of the running deploy requested (by alice@ops)",
	} {
		if !slices.Contains(said, want) {
			t.Errorf("no event says %q: %q", want, said)
		}
	}
	// The lock is free: the next operation runs at once.
	if _, unlock, err := a.lockRollout(context.Background(), rolloutLock{app: "web", kind: "scale", noWait: true}, nopProgress{}); err != nil {
		t.Errorf("an operation after the abort: %v", err)
	} else {
		unlock()
	}
}

// TestAbortWithOnlyQueued: with no rollout running (the app's lock held
// by a recovery), abort cancels the queued ones and says that nothing
// ran; with a rollout running past the point of undoing, it cancels them
// too, and its error says so.
func TestAbortWithOnlyQueued(t *testing.T) {
	a := lockingAgent(t)
	release, err := a.lock(context.Background(), "web", false, nopProgress{})
	if err != nil {
		t.Fatal(err)
	}
	hooked := make(chan error, 2)
	deploy := queuedRollout(a, "deploy", "v9", "bob@laptop", hooked)
	waitQueued(t, a, 1)
	res, err := a.Abort(context.Background(), "web")
	release()
	if err != nil || res.Running != "" || len(res.Cancelled) != 1 || res.Cancelled[0].Name() != "deploy of v9" {
		t.Fatalf("abort = %+v, %v; want the deploy of v9 cancelled", res, err)
	}
	if err := <-deploy; err == nil || err.Error() != "cancelled by `sprout abort` while it was queued: it never started" {
		t.Errorf("the queued deploy ended with %v", err)
	}

	_, unlock, err := a.lockRollout(context.Background(), rolloutLock{app: "web", kind: "deploy", label: "v10"}, nopProgress{})
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := a.stand("web"); err != nil {
		t.Fatal(err)
	}
	rollback := queuedRollout(a, "rollback", "v7", "bob@laptop", hooked)
	waitQueued(t, a, 1)
	res, err = a.Abort(context.Background(), "web")
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "too late") || !strings.Contains(err.Error(), "the operations queued behind it are cancelled: the rollback to v7 (started by bob@laptop)") {
		t.Errorf("abort of a standing deploy with a rollback queued: %v", err)
	}
	if res.Running != "" || len(res.Cancelled) != 1 {
		t.Errorf("abort of a standing deploy = %+v", res)
	}
	if err := <-rollback; !errors.Is(err, ErrCancelled) {
		t.Errorf("the rollback queued behind a standing deploy ended with %v", err)
	}
}
