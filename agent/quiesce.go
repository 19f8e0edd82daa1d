package agent

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// errUpgrading is what an operation asked for during Quiesce gets.
var errUpgrading = fmt.Errorf("%w: it starts nothing until the new agent process serves, in a few seconds; run the command again then", ErrUpgrading)

// Quiesce stops new operations (deploys, rollbacks, environment changes,
// scales, removals, recoveries, and the monitor's and watcher's rounds)
// and waits for those running to finish, so that the agent's state can
// be handed to a new agent process. With wait false, a running operation
// is not waited for: Quiesce refuses with ErrBusy, naming it. Operations
// asked for meanwhile are refused with ErrUpgrading. resume lets them run
// again, when the new process did not take over.
func (a *Agent) Quiesce(ctx context.Context, wait bool, p Progress) (resume func(), err error) {
	a.mu.Lock()
	if a.quiesced {
		a.mu.Unlock()
		return nil, busyError("another upgrade of this agent is under way")
	}
	if running := a.runningLocked(); !wait && len(running) > 0 {
		a.mu.Unlock()
		return nil, busyError(fmt.Sprintf("%s is in progress (without --no-wait, the upgrade waits for it)", strings.Join(running, ", ")))
	}
	a.quiesced = true
	close(a.quietLocked()) // wakes the operations waiting for a lock
	apps := slices.Sorted(maps.Keys(a.locks))
	a.mu.Unlock()

	// Holding every app's lock, nothing runs; an app's lock made from now
	// on is refused (lock and tryLock see quiesced).
	var held []chan struct{}
	resume = func() {
		for _, ch := range held {
			<-ch
		}
		a.mu.Lock()
		a.quiesced, a.quiet = false, nil
		a.mu.Unlock()
	}
	for _, app := range apps {
		a.mu.Lock()
		ch, op := a.locks[app], a.opOfLocked(app)
		a.mu.Unlock()
		select {
		case ch <- struct{}{}:
			held = append(held, ch)
			continue
		default:
		}
		if op != "" {
			p.Line(fmt.Sprintf("waiting for %s to finish", op))
		}
		select {
		case ch <- struct{}{}:
			held = append(held, ch)
		case <-ctx.Done():
			resume()
			return nil, context.Cause(ctx)
		}
	}
	return resume, nil
}

// runningLocked names the operations running, as "the deploy of web
// v2"; a.mu is held.
func (a *Agent) runningLocked() []string {
	var out []string
	for _, app := range slices.Sorted(maps.Keys(a.busy)) {
		out = append(out, a.opOfLocked(app))
	}
	return out
}

// opOfLocked names app's running operation: its rollout's ("the deploy of
// web v2"), "an operation on web" for another one, "" for none; a.mu is
// held.
func (a *Agent) opOfLocked(app string) string {
	if r, ok := a.rollouts[app]; ok {
		return strings.TrimSpace(fmt.Sprintf("the %s of %s %s", r.info.Kind, app, r.info.Label))
	}
	if a.busy[app] > 0 {
		return "an operation on " + app
	}
	return ""
}

// quietLocked returns the channel Quiesce closes; a.mu is held.
func (a *Agent) quietLocked() chan struct{} {
	if a.quiet == nil {
		a.quiet = make(chan struct{})
	}
	return a.quiet
}

// busyError is an ErrBusy with a sentence of its own (ErrBusy's speaks
// of a deploy of one app).
type busyError string

func (e busyError) Error() string        { return string(e) }
func (e busyError) Is(target error) bool { return target == ErrBusy }
