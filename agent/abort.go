package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrAborted is the cause of a rollout stopped by `sprout abort`; the
// rollout's error and its version's record say it.
var ErrAborted = errors.New("aborted by `sprout abort`")

// runningRollout is a rollout that holds its app's lock (see lockRollout).
// Abort cancels its context, so that the step it is at fails and its
// journal is replayed, unless the rollout already stands.
type runningRollout struct {
	op     string // deploy, rollback, setenv or scale
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
		if r.op == "scale" {
			fix = fmt.Sprintf("`sprout scale --app %s N` changes the count again once it has", app)
		}
		return fmt.Errorf("%w: too late to abort the %s of %s: its new instances serve every request and it is finishing; %s", ErrConflict, r.op, app, fix)
	}
	r.aborted = true
	r.cancel(ErrAborted)
	return nil
}

// Abort stops the rollout of app in flight (a deploy, rollback, setenv or
// scale), and returns once its journal has been replayed and every
// instance runs the version that was serving, with what it stopped. It
// returns "" when no rollout of app runs. A rollout whose new instances
// already serve every request (past the point where it would be undone)
// is not stopped, and the error says so.
func (a *Agent) Abort(ctx context.Context, app string) (string, error) {
	a.mu.Lock()
	r, busy := a.rollouts[app], a.busy[app] > 0
	a.mu.Unlock()
	if r == nil {
		if _, err := a.App(app); err != nil {
			return "", err
		}
		if busy {
			return "", fmt.Errorf("%w: %s is busy with a recovery, a removal or a change of the manifest it follows, which abort does not stop: wait until it is done", ErrConflict, app)
		}
		return "", nil
	}
	if err := r.abort(app); err != nil {
		return "", err
	}
	a.event(app, "", "abort", "abort of the running %s requested", r.op)
	select {
	case <-r.done:
		return r.op, nil
	case <-ctx.Done():
		return r.op, context.Cause(ctx)
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
