package agent

import (
	"cmp"
	"context"
	"errors"
	"runtime/debug"
	"slices"
	"time"
)

// Operations in flight.
//
// A deploy, rollback, setenv or scale belongs to the agent from the moment
// it is accepted: it runs on a context of the agent's (the API server
// gives it one that no client can cancel), so that a CLI that goes away,
// from Ctrl-C, a dropped ssh session or a cancelled CI job, does not stop
// it. Only `sprout abort` (Abort) stops one, by replaying its journal. The
// agent keeps a record of each, an Operation, which InFlight lists for
// `sprout status`; Wait returns once none is left, for a stopping or
// upgrading agent.

// Operation is a deploy, rollback, setenv or scale the agent runs or has
// queued, as `sprout status` shows it.
type Operation struct {
	App string `json:"app"`
	// Kind is deploy, rollback, setenv or scale (a volume change is a
	// setenv: it rolls out a configuration).
	Kind string `json:"kind"`
	// Label is the version it rolls out, once known: the new version of a
	// deploy, the target of a rollback, the serving one of a setenv or
	// scale. A queued deploy has it when it was given one, a queued
	// rollback when its target was named.
	Label string `json:"label,omitempty"`
	// Step is the step it is at ("" before its first), since StepSince.
	Step      string    `json:"step,omitempty"`
	StepSince time.Time `json:"step_since,omitzero"`
	// Queued is set while it waits for the app's operation in flight.
	Queued    bool      `json:"queued,omitempty"`
	StartedAt time.Time `json:"started_at"`
	// By says who or what asked for it, when known: user@host of a CLI,
	// a manifest, an environment's rollout.
	By string `json:"by,omitempty"`
}

// Name says what op does, as a noun: "deploy of v9", "rollback to v7",
// "setenv", "scale".
func (op Operation) Name() string {
	switch {
	case op.Label == "":
		return op.Kind
	case op.Kind == "rollback":
		return "rollback to " + op.Label
	}
	return op.Kind + " of " + op.Label
}

// started says who started op, or when: "started by bob@laptop".
func (op Operation) started() string {
	if op.By != "" {
		return "started by " + op.By
	}
	return "started at " + op.StartedAt.Format(time.TimeOnly)
}

// OperationWatcher is a Progress that also hears what its operation is:
// once when it queues behind another (Queued set), and once when its
// rollout begins, with its version's label. Either means the agent has
// accepted it and will carry it to its end; the API tells a client that
// follows it, so that it may stop following.
type OperationWatcher interface {
	Operation(Operation)
}

type startedByKey struct{}

// WithStartedBy returns ctx saying who asks for the operations run on it.
func WithStartedBy(ctx context.Context, by string) context.Context {
	if by == "" {
		return ctx
	}
	return context.WithValue(ctx, startedByKey{}, by)
}

func startedBy(ctx context.Context) string {
	by, _ := ctx.Value(startedByKey{}).(string)
	return by
}

// InFlight lists the operations the agent runs or has queued, by app, the
// running one of each app first.
func (a *Agent) InFlight() []Operation {
	a.mu.Lock()
	out := make([]Operation, 0, len(a.ops))
	for _, r := range a.ops {
		out = append(out, r.snapshot(a.rollouts[r.info.App] != r))
	}
	a.mu.Unlock()
	slices.SortStableFunc(out, func(x, y Operation) int {
		if c := cmp.Compare(x.App, y.App); c != 0 {
			return c
		}
		if x.Queued != y.Queued {
			if x.Queued {
				return 1
			}
			return -1
		}
		return x.StartedAt.Compare(y.StartedAt)
	})
	return out
}

// InFlightOf lists app's operations in flight, the running one first.
func (a *Agent) InFlightOf(app string) []Operation {
	var out []Operation
	for _, op := range a.InFlight() {
		if op.App == app {
			out = append(out, op)
		}
	}
	return out
}

// register records a rollout from the moment it asks for its app's lock.
func (a *Agent) register(ctx context.Context, l rolloutLock, cancel context.CancelCauseFunc, p Progress) *runningRollout {
	r := &runningRollout{cancel: cancel, done: make(chan struct{}),
		info: Operation{App: l.app, Kind: l.kind, Label: l.label, StartedAt: time.Now(), By: startedBy(ctx)}}
	r.watcher, _ = p.(OperationWatcher)
	a.mu.Lock()
	a.ops = append(a.ops, r)
	a.mu.Unlock()
	return r
}

// unregister forgets a rollout that ended or was refused.
func (a *Agent) unregister(r *runningRollout) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ops = slices.DeleteFunc(a.ops, func(x *runningRollout) bool { return x == r })
	if a.rollouts[r.info.App] == r {
		delete(a.rollouts, r.info.App)
	}
	if len(a.ops) == 0 {
		// The agent goes idle: the memory the operation used (the
		// bundle, the build's output, logs) goes back to the system
		// now, not over the runtime scavenger's minutes.
		go debug.FreeOSMemory()
	}
}

// running returns the rollout that holds app's lock, if any.
func (a *Agent) running(app string) *runningRollout {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rollouts[app]
}

// queued records that r waits behind the app's operation in flight, and
// tells its client.
func (r *runningRollout) queued() {
	r.tell(func(op *Operation) { op.Queued = true })
}

// begins records that r's rollout of label begins, and tells its client.
func (r *runningRollout) begins(label string) {
	r.tell(func(op *Operation) { op.Label, op.Queued = label, false })
}

// tell changes r's record with change and tells r's client what it is
// now.
func (r *runningRollout) tell(change func(*Operation)) {
	r.mu.Lock()
	change(&r.info)
	op := r.info
	r.mu.Unlock()
	if r.watcher != nil {
		r.watcher.Operation(op)
	}
}

// at records the step r is at.
func (r *runningRollout) at(step string) {
	r.mu.Lock()
	r.info.Step, r.info.StepSince = step, time.Now()
	r.mu.Unlock()
}

// snapshot is r's record; queued says whether it still waits for the lock.
func (r *runningRollout) snapshot(queued bool) Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	op := r.info
	op.Queued = queued
	return op
}

// RecordUnheard records, as an event of app, the error of an operation
// (kind) that ended before its rollout began while no client followed it
// (detached, or interrupted while queued), so that `sprout events` tells
// what the client could not. A rollout that began records its own end.
// One that an abort cancelled is left to Abort, which records it.
func (a *Agent) RecordUnheard(app, kind string, err error) {
	if errors.Is(err, ErrCancelled) {
		return
	}
	a.event(app, "", "refused", "the %s of %s did not start, and its client had gone: %v", kind, app, err)
}
