package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sprout-paas/sprout/store"
)

// ErrAborted is the cause of a rollout stopped by `sprout abort`; the
// rollout's error and its version's record say it.
var ErrAborted = errors.New("aborted by `sprout abort`")

// runningRollout is a rollout that holds its app's lock (see lockRollout).
// Abort cancels its context, so that the step it is at fails and its
// journal is replayed, unless the rollout already stands.
type runningRollout struct {
	cancel context.CancelCauseFunc
	done   chan struct{} // closed once the rollout lets go of the lock
	// watcher hears when the rollout queues and when it begins.
	watcher OperationWatcher

	mu       sync.Mutex
	aborted  bool
	standing bool
	info     Operation // what InFlight shows of it
}

// abort cancels the rollout, or says that it is too late to.
func (r *runningRollout) abort(app string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.standing {
		fix := fmt.Sprintf("`sprout rollback --app %s` serves the previous version again once it has", app)
		if r.info.Kind == "scale" {
			fix = fmt.Sprintf("`sprout scale --app %s N` changes the count again once it has", app)
		}
		return fmt.Errorf("%w: too late to abort the %s of %s: its new instances serve every request and it is finishing; %s", ErrConflict, r.info.Kind, app, fix)
	}
	r.aborted = true
	r.cancel(ErrAborted)
	return nil
}

// ErrCancelled is the cause of an operation that `sprout abort` cancelled
// while it was queued: it never started, and changed nothing.
var ErrCancelled = errors.New("cancelled by `sprout abort` while it was queued")

// Aborted says what an abort stopped.
type Aborted struct {
	// Running is the kind of the rollout it stopped (deploy, rollback,
	// setenv or scale), "" when none was running.
	Running string
	// Cancelled are the operations queued on the app that it cancelled,
	// in the order they queued.
	Cancelled []Operation
}

// Abort stops what is in flight on app, as `eb abort` does: the rollout
// running (a deploy, rollback, setenv or scale) is stopped and its
// journal replayed, so that every instance runs the version that was
// serving, and every operation queued on app is cancelled, never to start
// (its client, if one follows it, hears ErrCancelled): an abort leaves
// the last good version serving, not the next operation in line. It returns once all of them have ended, with what it
// stopped; with nothing in flight, with none. A rollout whose new
// instances already serve every request (past the point where it would be
// undone) is not stopped, and the error says so and what was cancelled.
func (a *Agent) Abort(ctx context.Context, app string) (Aborted, error) {
	by := startedBy(ctx)
	a.mu.Lock()
	r, busy := a.rollouts[app], a.busy[app] > 0
	var queued []*runningRollout
	for _, q := range a.ops {
		if q.info.App == app && q != r {
			queued = append(queued, q)
		}
	}
	// Cancelled under a.mu, a queued rollout cannot take its turn now
	// (see hold), not even once the running one lets go.
	for _, q := range queued {
		q.cancel(cancelledBy(by))
	}
	a.mu.Unlock()

	var out Aborted
	for _, q := range queued {
		op := q.snapshot(true)
		out.Cancelled = append(out.Cancelled, op)
		a.event(app, op.Label, "cancelled", "the queued %s (%s) was cancelled by `sprout abort`%s; it never started", op.Name(), op.started(), byWhom(by))
	}
	if r == nil && len(queued) == 0 {
		if _, err := a.App(app); err != nil {
			return out, err
		}
		if busy {
			return out, fmt.Errorf("%w: %s is busy with a recovery, a removal or a change of the manifest it follows, which abort does not stop: wait until it is done", ErrConflict, app)
		}
		return out, nil
	}
	var err error
	if r != nil {
		if err = r.abort(app); err == nil {
			out.Running = r.info.Kind
			a.event(app, "", "abort", "abort of the running %s requested%s", r.info.Kind, byWhom(by))
		} else if len(queued) > 0 {
			err = fmt.Errorf("%w; the operations queued behind it are cancelled: %s", err, out.cancelledText())
		}
	}
	// Wait for each to end: the stopped rollout once its journal is
	// replayed, the cancelled ones once they recorded why.
	if out.Running != "" {
		queued = append(queued, r)
	}
	for _, q := range queued {
		select {
		case <-q.done:
		case <-ctx.Done():
			return out, context.Cause(ctx)
		}
	}
	return out, err
}

// cancelledBy is the cause of an operation that an abort asked by by
// cancels while it is queued.
func cancelledBy(by string) error {
	return fmt.Errorf("%w%s: it never started", ErrCancelled, byWhom(by))
}

// byWhom says who asked, when known: " (by alice@laptop)".
func byWhom(by string) string {
	if by == "" {
		return ""
	}
	return " (by " + by + ")"
}

// cancelledText lists the operations an abort cancelled, in words.
func (ab Aborted) cancelledText() string {
	var names []string
	for _, op := range ab.Cancelled {
		names = append(names, fmt.Sprintf("the %s (%s)", op.Name(), op.started()))
	}
	return strings.Join(names, ", ")
}

// recordCancelled returns what records a deploy that an abort cancelled
// while it was queued: a failed version that says so, as `sprout
// versions` lists it (Abort records the event). The first deploy of an
// app not created yet, and one whose label another version holds, get
// none. A label the agent picks is the next free one, unless the running
// deploy picks it at the same moment; then one of the two records stays.
func (a *Agent) recordCancelled(req DeployRequest) func(error) {
	return func(cause error) {
		if _, err := a.store.App(req.App); err != nil {
			return
		}
		label := req.Label
		if label == "" {
			label = "v" + strconv.FormatUint(a.store.NextSeq(req.App), 10)
		}
		if old, err := a.store.Version(req.App, label); err == nil && old.Status != store.StatusFailed {
			return
		}
		v := &store.Version{App: req.App, Label: label, Status: store.StatusFailed, Source: req.Source, Commit: req.Commit, CreatedAt: time.Now(), Error: cause.Error()}
		if err := a.store.PutVersion(v); err != nil {
			a.log.Error("record a cancelled deploy", "app", req.App, "label", label, "error", err)
		}
	}
}

// stand marks the rollout of app as past the point where an abort could
// undo it, from which on it finishes; it returns ErrAborted when an abort
// came first.
func (a *Agent) stand(app string) error {
	a.mu.Lock()
	r := a.rollouts[app]
	a.mu.Unlock()
	if r == nil {
		return nil // a recovery: nothing aborts it
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.aborted {
		return ErrAborted
	}
	r.standing = true
	return nil
}
