package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestAbortBeforeAndAfterTheRolloutStands: an abort before the rollout
// stands cancels its context with ErrAborted, and the rollout then cannot
// stand; once it stands, an abort is refused with the way back.
func TestAbortBeforeAndAfterTheRolloutStands(t *testing.T) {
	for _, op := range []string{"deploy", "scale"} {
		ctx, cancel := context.WithCancelCause(context.Background())
		r := &runningRollout{op: op, cancel: cancel}
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
		r := &runningRollout{op: op, cancel: cancel}
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
