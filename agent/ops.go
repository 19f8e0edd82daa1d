package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/platform"
	"github.com/sprout-paas/sprout/store"
)

// Rollback serves an earlier version again, from its kept image, with the
// same health-gated swap. With to empty it picks the version that served
// before the current one.
func (a *Agent) Rollback(ctx context.Context, app, to string, noWait bool, p Progress) (*store.Version, error) {
	unlock, err := a.lock(ctx, app, noWait, p)
	if err != nil {
		return nil, err
	}
	defer unlock()
	cur, err := a.store.App(app)
	if err != nil {
		return nil, fmt.Errorf("app %s: %w", app, err)
	}
	target, err := a.rollbackTarget(cur, to)
	if err != nil {
		return nil, err
	}
	if _, err := a.rt.Image(ctx, target.Image); err != nil {
		return nil, fmt.Errorf("%w: the image of %s is no longer on this host (%v); deploy its bundle again", ErrConflict, target.Label, err)
	}
	a.event(app, target.Label, "rollback", "rollback from %s to %s started", cur.Serving, target.Label)
	next := *cur
	d := &deployment{a: a, op: "rollback", app: &next, prev: cur, v: target, p: p, start: time.Now()}
	if err := d.rollout(ctx, cur.Env); err != nil {
		return target, d.failRollout(err)
	}
	a.event(app, target.Label, "rollback", "rolled back to %s", target.Label)
	// Report this rollout's timings, not those of the version's deploy.
	result := *target
	result.Steps = d.steps
	return &result, nil
}

func (a *Agent) rollbackTarget(cur *store.App, to string) (*store.Version, error) {
	if to != "" {
		v, err := a.store.Version(cur.Name, to)
		if err != nil {
			return nil, fmt.Errorf("version %s of %s: %w (see `sprout versions --app %s`)", to, cur.Name, err, cur.Name)
		}
		switch {
		case v.Label == cur.Serving:
			return nil, fmt.Errorf("%w: %s is already serving", ErrConflict, to)
		case v.Status == store.StatusFailed:
			return nil, fmt.Errorf("%w: %s failed to deploy (%s); it cannot be served", ErrConflict, to, v.Error)
		case v.ImagePruned:
			return nil, fmt.Errorf("%w: the image of %s was pruned (only the last %d are kept); deploy its bundle again", ErrConflict, to, a.cfg.KeepVersions)
		}
		return v, nil
	}
	versions, err := a.store.Versions(cur.Name)
	if err != nil {
		return nil, err
	}
	// The newest retired version by the time it last served.
	var best *store.Version
	for _, v := range versions {
		if v.Status == store.StatusRetired && !v.ImagePruned && (best == nil || v.DeployedAt.After(best.DeployedAt)) {
			best = v
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: %s has no earlier version to roll back to", ErrConflict, cur.Name)
	}
	return best, nil
}

// failRollout handles a failed rollback or environment rollout: the
// version keeps its status (it did not fail; this rollout did), the new
// container is removed, and the serving version stays.
func (d *deployment) failRollout(err error) error {
	status := d.v.Status
	serr := d.fail(err)
	d.v.Status, d.v.FailedStep, d.v.Error = status, "", ""
	d.a.store.PutVersion(d.v)
	return serr
}

// SetEnv changes an app's environment properties. When the app is serving,
// the change is rolled out with the same health-gated swap and kept only
// if the new container becomes healthy.
func (a *Agent) SetEnv(ctx context.Context, app string, set map[string]string, unset []string, noWait bool, p Progress) error {
	if err := ValidateAppName(app); err != nil {
		return err
	}
	unlock, err := a.lock(ctx, app, noWait, p)
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := a.appOrNew(app)
	if err != nil {
		return err
	}
	env := platform.Apply(cur.Env, set, unset)
	if err := platform.ValidateEnv(env); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if cur.Serving == "" {
		cur.Env = env
		if err := a.store.PutApp(cur); err != nil {
			return err
		}
		a.event(app, "", "config", "environment changed (%d set, %d removed); it applies from the first deploy", len(set), len(unset))
		p.Line("saved; no version is serving yet, so the environment applies from the first deploy")
		return nil
	}
	v, err := a.store.Version(app, cur.Serving)
	if err != nil {
		return err
	}
	a.event(app, v.Label, "config", "environment change started (%d set, %d removed)", len(set), len(unset))
	next := *cur
	d := &deployment{a: a, op: "setenv", app: &next, prev: cur, v: v, p: p, start: time.Now()}
	if err := d.rollout(ctx, env); err != nil {
		return d.failRollout(err)
	}
	a.event(app, v.Label, "config", "environment change is live on %s", v.Label)
	return nil
}

// Apps returns every app on this host.
func (a *Agent) Apps() ([]*store.App, error) { return a.store.Apps() }

// App returns one app.
func (a *Agent) App(name string) (*store.App, error) {
	app, err := a.store.App(name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("app %s: %w (see `sprout apps`)", name, err)
	}
	return app, err
}

// Versions returns an app's versions, newest first.
func (a *Agent) Versions(app string) ([]*store.Version, error) {
	if _, err := a.App(app); err != nil {
		return nil, err
	}
	return a.store.Versions(app)
}

// Events returns the newest events, of one app when app is not empty.
func (a *Agent) Events(app string, limit int) ([]store.Event, error) {
	return a.store.Events(app, limit)
}

// ContainerStatus is what the engine says of an app's serving container.
type ContainerStatus struct {
	ID           string
	Addr         string
	HostPort     int
	State        string
	Health       string
	RestartCount int
	StartedAt    time.Time
}

// ContainerStatus inspects the serving container of app.
func (a *Agent) ContainerStatus(ctx context.Context, app *store.App) ContainerStatus {
	cs := ContainerStatus{ID: app.ContainerID, State: "none"}
	if app.ContainerID == "" {
		return cs
	}
	c, err := a.rt.Container(ctx, app.ContainerID)
	if err != nil {
		cs.State = "missing"
		return cs
	}
	cs.Addr, cs.HostPort = c.Addr, c.HostPort
	st, err := a.rt.State(ctx, app.ContainerID)
	if err == nil {
		cs.RestartCount, cs.StartedAt, cs.Health = st.RestartCount, st.StartedAt, st.Health
		switch {
		case st.Restarting:
			cs.State = "restarting"
		case st.Running:
			cs.State = "running"
		default:
			cs.State = fmt.Sprintf("exited (%d)", st.ExitCode)
		}
	}
	return cs
}

// HealthSettings returns app's health settings, the agent's defaults
// filling what the app does not set.
func (a *Agent) HealthSettings(app *store.App) health.Settings {
	return app.Health.Or(a.cfg.Health)
}

// Targets returns where the proxy sends app's traffic now.
func (a *Agent) Targets(app string) []string { return a.router.Targets(app) }
