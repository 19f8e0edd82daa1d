package agent

import (
	"context"
	"fmt"

	"github.com/sprout-paas/sprout/rollout"
)

// Scale changes how many instances app runs to n, on the version it
// serves, with the same health-gated rollout as a deploy: the plan of
// rollout.Scale under the app's deployment policy. Growing starts the new
// instances in batches, each healthy before it takes traffic; shrinking
// drains the surplus before it stops it. The count becomes the app's only
// when the rollout succeeds; when it fails (or is aborted) its journal is
// replayed and the instances that served keep serving. A scale runs no
// hooks, as Elastic Beanstalk runs none for a capacity change.
func (a *Agent) Scale(ctx context.Context, name string, n int, noWait bool, p Progress) error {
	if err := ValidateAppName(name); err != nil {
		return err
	}
	if n < 1 || n > rollout.MaxInstances {
		return fmt.Errorf("%w: an app runs from 1 to %d instances on one host, not %d: give a count in that range", ErrInvalid, rollout.MaxInstances, n)
	}
	ctx, unlock, err := a.lockRollout(ctx, rolloutLock{app: name, kind: "scale", noWait: noWait}, p)
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := a.App(name)
	if err != nil {
		return err
	}
	if cur.Serving == "" {
		return fmt.Errorf("%w: %s serves no version, so there is nothing to scale: deploy one with `sprout deploy --app %s --instances %d`", ErrConflict, name, name, n)
	}
	v, err := a.store.Version(name, cur.Serving)
	if err != nil {
		return err
	}
	from := cur.InstanceCount()
	if most := routingOf(v).most(); most > 0 && n > most {
		return fmt.Errorf("%w: %s %s runs with ProxyServer none, which publishes its one container on port %d, so it runs %d instance only: deploy a version without ProxyServer: none (in .ebextensions) to scale it", ErrInvalid, name, v.Label, cur.Port, most)
	}
	if n == from {
		p.Line(fmt.Sprintf("%s already runs %d instance(s) of %s: nothing to do", name, n, v.Label))
		return nil
	}
	a.event(name, v.Label, "scale", "scaling %s from %d to %d instances", v.Label, from, n)
	next := *cur
	next.Capacity = n
	d := a.newDeployment("scale", &next, cur, v, p)
	if err := d.rollout(ctx); err != nil {
		return d.failRollout(ctx, err)
	}
	a.event(name, v.Label, "scale", "scaled from %d to %d instances", from, n)
	return nil
}
