package agent

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/sprout-paas/sprout/proxy"
	"github.com/sprout-paas/sprout/runtime"
	"github.com/sprout-paas/sprout/store"
)

// Start rebuilds the agent's view of the host from its store and the
// containers labelled as its own. It first undoes the rollouts that a
// stop of the agent interrupted, from their journals; then serving
// containers are routed again (restarted or recreated from their image
// when they are gone), containers of interrupted deploys are removed, and
// versions left pending are recorded as failed. It returns once every
// serving app has a route.
func (a *Agent) Start(ctx context.Context) error {
	if err := a.undoInterrupted(ctx); err != nil {
		return fmt.Errorf("read the journals of interrupted rollouts: %w", err)
	}
	owned, err := a.rt.List(ctx, map[string]string{runtime.LabelAgent: a.id})
	if err != nil {
		return fmt.Errorf("list this agent's containers: %w", err)
	}
	byID := map[string]*runtime.Container{}
	for _, c := range owned {
		byID[c.ID] = c
	}
	apps, err := a.store.Apps()
	if err != nil {
		return err
	}
	serving := map[string]bool{}
	for _, app := range apps {
		if app.Serving == "" {
			continue
		}
		var backends []proxy.Backend
		var names []string
		for _, id := range app.ServingIDs() {
			c, ok := byID[id]
			if !ok {
				continue
			}
			serving[c.ID] = true // a stopped one is replaced by the recovery, which removes it
			if c.Running && c.Addr != "" {
				backends = append(backends, proxy.Backend{Addr: c.Addr, Version: c.Labels[runtime.LabelLabel]})
				names = append(names, shortID(c.ID)+" at "+c.Addr)
			}
		}
		// Its containers stay, even when it cannot be routed: a port
		// taken by another program must not cost the app its instances.
		if _, err := a.servingRouting(app).adopt(a, app, backends); err != nil {
			a.event(app.Name, app.Serving, "restore", "%v", err)
			continue
		}
		if len(backends) > 0 {
			a.metrics.Serving(app.Name, app.Serving)
			a.event(app.Name, app.Serving, "restore", "re-adopted %d of %d instance(s) of %s: %s", len(backends), app.InstanceCount(), app.Serving, strings.Join(names, ", "))
		}
		if len(backends) < app.InstanceCount() {
			go a.recover(context.WithoutCancel(ctx), app.Name)
		}
	}
	a.manageCerts() // the domains served now, even none
	for _, c := range owned {
		if serving[c.ID] {
			continue
		}
		if err := a.rt.Remove(ctx, c.ID); err != nil {
			a.log.Warn("remove orphan container", "id", shortID(c.ID), "error", err)
			continue
		}
		a.event(c.Labels[runtime.LabelApp], c.Labels[runtime.LabelLabel], "restore", "removed container %s left by an interrupted deploy", c.Name)
	}
	// With their containers gone, interrupted versions can lose their images.
	for _, app := range apps {
		a.failPending(ctx, app.Name)
	}
	// Unpacked bundles and uploads of interrupted deploys.
	for _, dir := range []string{uploadsDir(a.cfg), bundlesDir(a.cfg)} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			os.RemoveAll(dir + "/" + e.Name())
		}
	}
	return nil
}

// failPending records versions whose deploy the agent's stop interrupted,
// and removes the image tags they made.
func (a *Agent) failPending(ctx context.Context, app string) {
	versions, _ := a.store.Versions(app)
	for _, v := range versions {
		if v.Status != store.StatusPending {
			continue
		}
		if v.Image != "" {
			if err := a.removeImage(ctx, v.Image); err != nil {
				a.log.Warn("remove image of an interrupted deploy", "image", v.Image, "error", err)
			}
		}
		v.Status, v.FailedStep, v.Error = store.StatusFailed, "interrupted", "the agent stopped during this deploy; deploy it again"
		a.store.PutVersion(v)
		a.event(app, v.Label, "deploy-failed", "deploy of %s was interrupted by an agent restart", v.Label)
	}
}

// recover brings back an app whose serving container is stopped or gone,
// from the serving version's image, with the usual health-gated swap.
func (a *Agent) recover(ctx context.Context, name string) {
	p := &logProgress{log: a.log.With("app", name, "op", "recover")}
	unlock, err := a.lock(ctx, name, false, p)
	if err != nil {
		return
	}
	defer unlock()
	app, err := a.store.App(name)
	if err != nil || app.Serving == "" {
		return
	}
	v, err := a.store.Version(name, app.Serving)
	if err != nil {
		a.log.Error("recover: serving version missing", "app", name, "error", err)
		return
	}
	a.event(name, v.Label, "restore", "not every instance of %s is running; starting what is missing from its image", v.Label)
	next := *app
	d := a.newDeployment("recover", &next, app, v, p)
	if err := d.rollout(ctx); err != nil {
		d.failRollout(ctx, err)
		return
	}
	a.event(name, v.Label, "restore", "%s is serving again", v.Label)
}
