package agent

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// lines is a Progress that keeps its lines.
type lines struct {
	mu  sync.Mutex
	all []string
}

func (l *lines) Step(string) {}
func (l *lines) Line(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, s)
}
func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.all, "\n")
}

func newLockingAgent() *Agent {
	return &Agent{locks: map[string]chan struct{}{}, busy: map[string]int{}, rollouts: map[string]*runningRollout{}}
}

// TestQuiesceWaitsForOperations: Quiesce refuses, with wait false, while
// a deploy runs, naming it; with wait true it says it waits, refuses new
// operations meanwhile, returns once the deploy is done, keeps the
// monitor out, and resume lets operations run again.
func TestQuiesceWaitsForOperations(t *testing.T) {
	a := newLockingAgent()
	ctx := context.Background()
	_, unlockDeploy, err := a.lockRollout(ctx, rolloutLock{app: "web", kind: "deploy", label: "v2"}, nopProgress{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Quiesce(ctx, false, nopProgress{}); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "the deploy of web v2 is in progress") {
		t.Fatalf("Quiesce without waiting during a deploy: %v", err)
	}
	// The refusal changed nothing.
	if unlock, err := a.lock(ctx, "api", true, nopProgress{}); err != nil {
		t.Fatalf("an operation after the refusal: %v", err)
	} else {
		unlock()
	}

	// A second deploy of web queues behind the first.
	queued := make(chan error, 1)
	go func() {
		unlock, err := a.lock(ctx, "web", false, nopProgress{})
		if err == nil {
			unlock()
		}
		queued <- err
	}()
	waitUntil(t, func() bool { a.mu.Lock(); defer a.mu.Unlock(); return a.quiet != nil })

	p := &lines{}
	type result struct {
		resume func()
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resume, err := a.Quiesce(ctx, true, p)
		done <- result{resume, err}
	}()
	waitUntil(t, func() bool { return strings.Contains(p.String(), "waiting for the deploy of web v2 to finish") })
	if err := <-queued; !errors.Is(err, ErrUpgrading) {
		t.Errorf("the queued deploy: %v, want ErrUpgrading", err)
	}
	if _, err := a.lock(ctx, "api", false, nopProgress{}); !errors.Is(err, ErrUpgrading) {
		t.Errorf("an operation during Quiesce: %v, want ErrUpgrading", err)
	}
	select {
	case r := <-done:
		t.Fatalf("Quiesce returned during the deploy: %v", r.err)
	case <-time.After(50 * time.Millisecond):
	}
	unlockDeploy()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	// An app whose lock Quiesce does not hold (one created since) is
	// refused all the same.
	if _, ok := a.tryLock("created-since"); ok {
		t.Error("the monitor got an app's lock while quiesced")
	}
	a.mu.Lock()
	quiesced := a.quiesced
	a.mu.Unlock()
	if !quiesced {
		t.Error("not quiescing")
	}
	if _, err := a.Quiesce(ctx, true, nopProgress{}); !errors.Is(err, ErrBusy) {
		t.Errorf("a second Quiesce: %v, want ErrBusy", err)
	}
	r.resume()
	for _, app := range []string{"web", "api", "new"} {
		unlock, err := a.lock(ctx, app, true, nopProgress{})
		if err != nil {
			t.Fatalf("%s after resume: %v", app, err)
		}
		unlock()
	}
}

// TestQuiesceGivesUpWithItsContext: a Quiesce whose context ends while it
// waits lets operations run again.
func TestQuiesceGivesUpWithItsContext(t *testing.T) {
	a := newLockingAgent()
	_, unlock, _ := a.lockRollout(context.Background(), rolloutLock{app: "web", kind: "scale"}, nopProgress{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := a.Quiesce(ctx, true, nopProgress{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Quiesce = %v, want the context's end", err)
	}
	unlock()
	u, err := a.lock(context.Background(), "web", true, nopProgress{})
	if err != nil {
		t.Fatalf("after the given-up Quiesce: %v", err)
	}
	u()
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
