package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/platform"
	"github.com/sprout-paas/sprout/runtime"
	"github.com/sprout-paas/sprout/store"
)

// Rollback serves an earlier version again, from its kept image, with the
// same health-gated swap. With to empty it picks the version that served
// before the current one.
func (a *Agent) Rollback(ctx context.Context, app, to string, noWait bool, p Progress) (*store.Version, error) {
	return a.rollback(ctx, app, to, nil, noWait, p)
}

// rollback serves version to again; with env not nil, with that
// environment (kept only if the version becomes healthy).
func (a *Agent) rollback(ctx context.Context, app, to string, env map[string]string, noWait bool, p Progress) (*store.Version, error) {
	ctx, unlock, err := a.lockRollout(ctx, rolloutLock{app: app, kind: "rollback", label: to, noWait: noWait}, p)
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
	if env != nil {
		next.Env = env
	}
	d := a.newDeployment("rollback", &next, cur, target, p)
	if err := d.rollout(ctx); err != nil {
		return target, d.failRollout(ctx, err)
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

// failRollout handles a failed rollback, environment rollout, scale or
// recovery: the version keeps its status (it did not fail; this rollout
// did), the new containers are removed, and the serving version stays.
func (d *deployment) failRollout(ctx context.Context, err error) error {
	status := d.v.Status
	serr := d.fail(ctx, err)
	d.v.Status, d.v.FailedStep, d.v.Error = status, "", ""
	d.a.store.PutVersion(d.v)
	return serr
}

// SetEnv changes an app's environment properties. When the app is serving,
// the change is rolled out with the same health-gated swap and kept only
// if the new container becomes healthy.
func (a *Agent) SetEnv(ctx context.Context, app string, set map[string]string, unset []string, noWait bool, p Progress) error {
	what := fmt.Sprintf("environment changed (%d set, %d removed)", len(set), len(unset))
	return a.reconfigure(ctx, app, noWait, p, what, func(cur *store.App) error {
		env := platform.Apply(cur.Env, set, unset)
		if err := platform.ValidateEnv(env); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		cur.Env = env
		return nil
	})
}

// reconfigure changes an app's settings with change and, when a version
// is serving, rolls the change out to it with the health-gated swap (a
// configuration deployment, which runs the version's confighooks). The
// change is kept only if the new container becomes healthy. With nothing
// serving, it is saved for the first deploy.
func (a *Agent) reconfigure(ctx context.Context, name string, noWait bool, p Progress, what string, change func(*store.App) error) error {
	if err := ValidateAppName(name); err != nil {
		return err
	}
	ctx, unlock, err := a.lockRollout(ctx, rolloutLock{app: name, kind: "setenv", noWait: noWait}, p)
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := a.appOrNew(name)
	if err != nil {
		return err
	}
	next := *cur
	if err := change(&next); err != nil {
		return err
	}
	if cur.Serving == "" {
		if err := a.store.PutApp(&next); err != nil {
			return err
		}
		a.event(name, "", "config", "%s; it applies from the first deploy", what)
		p.Line("saved; no version is serving yet, so this applies from the first deploy")
		return nil
	}
	v, err := a.store.Version(name, cur.Serving)
	if err != nil {
		return err
	}
	a.event(name, v.Label, "config", "%s: rolling out", what)
	d := a.newDeployment("setenv", &next, cur, v, p)
	if err := d.rollout(ctx); err != nil {
		return d.failRollout(ctx, err)
	}
	a.event(name, v.Label, "config", "%s: live on %s", what, v.Label)
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
	st, err := a.rt.State(ctx, app.ContainerID)
	if err != nil {
		cs.State = "missing"
		return cs
	}
	cs.Addr, cs.HostPort = st.Addr, st.HostPort
	cs.RestartCount, cs.StartedAt, cs.Health = st.RestartCount, st.StartedAt, st.Health
	switch {
	case st.Restarting:
		cs.State = "restarting"
	case st.Running:
		cs.State = "running"
	default:
		cs.State = fmt.Sprintf("exited (%d)", st.ExitCode)
	}
	return cs
}

// InstanceStatus is one instance of an app as `sprout status` shows it.
type InstanceStatus struct {
	Name        string    `json:"name"`
	Label       string    `json:"label"`
	ContainerID string    `json:"container_id"`
	Addr        string    `json:"addr,omitempty"`
	State       string    `json:"state"`
	Routed      bool      `json:"routed"`
	Since       time.Time `json:"since,omitzero"`
	// Check is the monitor's last health check of the instance: "ok",
	// "failing" (since FailingSince) or "" before the first.
	Check        string    `json:"check,omitempty"`
	CheckedAt    time.Time `json:"checked_at,omitzero"`
	FailingSince time.Time `json:"failing_since,omitzero"`
}

// Instances returns the state of each of app's instances.
func (a *Agent) Instances(ctx context.Context, app *store.App) []InstanceStatus {
	routed := a.router.InRotation(app.Name)
	checks := a.instanceHealth(app.Name)
	ins := app.InstanceList()
	out := make([]InstanceStatus, 0, len(ins))
	for _, in := range ins {
		cs := a.ContainerStatus(ctx, &store.App{ContainerID: in.ContainerID})
		ih, checked := checks[in.ContainerID]
		is := InstanceStatus{Name: in.Name, Label: in.Label, ContainerID: in.ContainerID, Addr: cs.Addr, State: cs.State,
			Routed: cs.Addr != "" && slices.Contains(routed, cs.Addr), Since: in.StartedAt}
		if checked && ih.checksRun {
			is.Check, is.CheckedAt, is.FailingSince = "ok", ih.lastCheck.At, ih.failingSince
			if ih.lastCheck.Err != "" {
				is.Check = "failing"
			}
		}
		out = append(out, is)
	}
	return out
}

// HealthSettings returns app's health settings: the app's own (set with
// deploy flags), then the serving version's bundle settings, then the
// agent's defaults.
func (a *Agent) HealthSettings(app *store.App) health.Settings {
	var v *store.Version
	if app.Serving != "" {
		v, _ = a.store.Version(app.Name, app.Serving)
	}
	return a.healthFor(app, v)
}

// healthFor returns app's health settings while v serves.
func (a *Agent) healthFor(app *store.App, v *store.Version) health.Settings {
	defaults := a.cfg.Health
	if v != nil && v.Options.HealthPath != "" {
		defaults.Path = v.Options.HealthPath
	}
	return app.Health.Or(defaults)
}

// Targets returns where the proxy sends app's traffic now.
func (a *Agent) Targets(app string) []string { return a.router.Targets(app) }

// Environment is what an app's containers get: its properties and where
// each comes from.
type Environment struct {
	Env map[string]string
	// FromBundle lists the keys that come from the serving version's
	// .ebextensions and are not overridden with `sprout setenv`.
	FromBundle []string
	// Derived lists the keys Sprout builds (DATABASE_URL from RDS_*).
	Derived []string
}

// Environment returns the environment app's serving version runs with.
func (a *Agent) Environment(name string) (Environment, error) {
	app, err := a.App(name)
	if err != nil {
		return Environment{}, err
	}
	var bundle map[string]string
	if app.Serving != "" {
		if v, err := a.store.Version(name, app.Serving); err == nil {
			bundle = v.Options.Env
		}
	}
	e := Environment{Env: platform.Effective(bundle, app.Env)}
	for k := range e.Env {
		_, own := app.Env[k]
		_, inBundle := bundle[k]
		switch {
		case own:
		case inBundle:
			e.FromBundle = append(e.FromBundle, k)
		default:
			e.Derived = append(e.Derived, k)
		}
	}
	slices.Sort(e.FromBundle)
	slices.Sort(e.Derived)
	return e, nil
}

// forget drops what the agent keeps in memory of a removed app: its
// metrics series, request window, monitor state and manifest state.
func (a *Agent) forget(name string) {
	a.metrics.Forget(name)
	a.tracker.Forget(name)
	a.mu.Lock()
	delete(a.health, name)
	a.mu.Unlock()
	a.manifests.forget(name)
}

// RemoveApp stops and removes an app: its container, port, images, kept
// bundles and state. Its persistent volumes and logs are kept, so that a
// new deploy of the same name finds its data, unless purge is set.
func (a *Agent) RemoveApp(ctx context.Context, name string, purge bool, p Progress) error {
	unlock, err := a.lock(ctx, name, false, p)
	if err != nil {
		return err
	}
	defer unlock()
	app, err := a.App(name)
	if err != nil {
		return err
	}
	ctx = context.WithoutCancel(ctx)
	// The app's routing state goes with it, so that nothing of it can
	// send a later request to a container that reused an address.
	a.router.Remove(name, a.cfg.DrainTimeout)
	a.forgetDomains(name)
	if len(app.Domains) > 0 {
		p.Line(fmt.Sprintf("no longer served at %s", strings.Join(app.Domains, ", ")))
	} else {
		p.Line(fmt.Sprintf("closed port %d", app.Port))
	}
	cs, err := a.rt.List(ctx, map[string]string{runtime.LabelAgent: a.id, runtime.LabelApp: name})
	if err != nil {
		return err
	}
	for _, c := range cs {
		a.rt.Stop(ctx, c.ID, a.cfg.StopGrace)
		a.archiveLogs(ctx, name, c.Labels[runtime.LabelLabel], c.ID)
		if err := a.rt.Remove(ctx, c.ID); err != nil {
			return err
		}
		p.Line("removed container " + c.Name)
	}
	versions, _ := a.store.Versions(name)
	for _, v := range versions {
		if v.Image != "" && !v.ImagePruned {
			if err := a.removeImage(ctx, v.Image); err != nil {
				p.Line("warning: " + err.Error())
			}
		}
	}
	os.RemoveAll(filepath.Join(a.cfg.DataDir, "versions", name))
	if err := a.store.DeleteApp(name); err != nil {
		return err
	}
	a.forget(name)
	vols, err := a.ownVolumes(ctx, name)
	if err != nil {
		return err
	}
	if !purge {
		if len(vols) > 0 {
			p.Line(fmt.Sprintf("kept %d volume(s) and the app's logs; a new deploy of %s mounts the volumes again, and `sprout apps rm %s --purge` deletes them", len(vols), name, name))
		}
		a.event(name, "", "removed", "%s removed; its volumes and logs are kept", name)
		return nil
	}
	var errs []error
	for _, v := range vols {
		if err := a.rt.RemoveVolume(ctx, v.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		p.Line("deleted volume " + v.Name)
	}
	os.RemoveAll(logsDir(a.cfg, name))
	os.RemoveAll(filepath.Join(a.cfg.DataDir, "applogs", name))
	a.event(name, "", "removed", "%s removed with its volumes and logs", name)
	return errors.Join(errs...)
}
