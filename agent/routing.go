package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sprout-paas/sprout/proxy"
	"github.com/sprout-paas/sprout/store"
)

// A routing strategy is how an app's requests reach its instances: through
// Sprout's proxy (proxyRouting), or straight to the one container that
// publishes the app's port itself (directRouting, Elastic Beanstalk's
// ProxyServer none). The executor, the agent's start, the watcher and the
// monitor ask it at the few points where the two differ, and none of them
// asks which one it is.
//
// A strategy made for a rollout also knows what held the app's port
// before (a serving version may use the other strategy): moving the port
// from one to the other is its business.
type routing interface {
	// most is how many instances it can serve; 0 is any number.
	most() int
	// splits tells whether it can share requests between two versions
	// (a canary).
	splits() bool
	// open readies the app's public port for a deploy, before anything
	// is built, so that a port clash fails the deploy first.
	open(d *deployment) error
	// publish readies the host for a new instance of the rollout and says
	// which host port the instance publishes (0: none).
	publish(ctx context.Context, x *executor) (int, error)
	// route sends the app's requests to exactly backends, shared between
	// versions by split when it is set. It returns the targets it took
	// out, to drain, and whether anything moved (so that there is
	// something to undo).
	route(ctx context.Context, x *executor, backends []proxy.Backend, split map[string]int) (retired *proxy.Retired, moved bool, err error)
	// leave closes what the serving version used and the new one does
	// not, once a rollout stands.
	leave(d *deployment)
	// adopt routes an app's running instances again, on the agent's
	// start and when the engine brought one back on another address, and
	// says whether its routes changed.
	adopt(a *Agent, app *store.App, backends []proxy.Backend) (bool, error)
	// hold takes an instance out of the rotation (in false) or puts it
	// back, and says whether it could.
	hold(a *Agent, app, addr string, in bool) bool
}

// routingOf is the strategy that serves version v of app, on its own.
func routingOf(v *store.Version) routing {
	if v != nil && v.Options.ProxyNone {
		return &directRouting{}
	}
	return &proxyRouting{}
}

// servingRouting is the strategy of the version app serves.
func (a *Agent) servingRouting(app *store.App) routing {
	v, _ := a.store.Version(app.Name, app.Serving)
	return routingOf(v)
}

// routingFor is the strategy of a rollout of d.v, from what serves now.
func (d *deployment) routingFor() routing {
	var was routing = &proxyRouting{}
	if d.prev.Serving != "" {
		if pv, err := d.a.store.Version(d.prev.Name, d.prev.Serving); err == nil {
			was = routingOf(pv)
		}
	}
	_, wasDirect := was.(*directRouting)
	// The serving version holds the app's public port through the
	// other strategy: the new one takes it over. An app with domains has
	// no port of its own (OwnPort 0).
	oldPort, newPort := d.prev.OwnPort(), d.app.OwnPort()
	samePort := d.prev.Serving != "" && oldPort != 0 && oldPort == newPort
	closeOld := d.prev.Serving != "" && oldPort != 0 && oldPort != newPort && !wasDirect
	if d.v.Options.ProxyNone {
		return &directRouting{proxyHeld: samePort && !wasDirect, closeOld: closeOld}
	}
	return &proxyRouting{containerHeld: samePort && wasDirect, closeOld: closeOld}
}

// proxyRouting sends requests through Sprout's proxy, which balances them
// across any number of instances and can split them between versions.
type proxyRouting struct {
	// containerHeld: the serving container publishes the app's port
	// itself (ProxyServer none); it stops, and the proxy takes the port,
	// at the first route.
	containerHeld bool
	// closeOld: the proxy served the app on another port, closed once the
	// rollout stands.
	closeOld bool
}

func (r *proxyRouting) most() int    { return 0 }
func (r *proxyRouting) splits() bool { return true }

func (r *proxyRouting) open(d *deployment) error {
	if len(d.app.Domains) > 0 {
		return d.serveDomains()
	}
	if d.prev.Serving != "" && d.prev.OwnPort() == d.app.Port {
		return nil // open already, or held by the container until the first route
	}
	return d.listen()
}

func (r *proxyRouting) publish(context.Context, *executor) (int, error) { return 0, nil }

func (r *proxyRouting) route(ctx context.Context, x *executor, backends []proxy.Backend, split map[string]int) (*proxy.Retired, bool, error) {
	d, a := x.d, x.d.a
	if r.containerHeld {
		// Requests fail from here until the proxy routes: the downtime
		// that ProxyServer none brings, paid once, leaving it.
		for _, name := range slices.Clone(x.routed) {
			if err := x.stop(ctx, name); err != nil {
				return nil, false, err
			}
			backends = slices.DeleteFunc(backends, func(b proxy.Backend) bool { return b.Addr == x.inst[name].addr })
		}
		if err := d.listen(); err != nil {
			return nil, false, err
		}
		r.containerHeld = false
		d.linef("the proxy took port %d over from %s's container", d.app.Port, d.prev.Serving)
	}
	retired, err := a.router.Route(d.app.Name, backends, split)
	return retired, err == nil, err
}

func (r *proxyRouting) leave(d *deployment) {
	closeOldPort(d, r.closeOld)
	d.settleDomains()
}

// closeOldPort closes the port the proxy served the app on before, when
// the app moved to another (or to domains).
func closeOldPort(d *deployment, closeOld bool) {
	if closeOld {
		d.a.router.Close(d.prev.Port, d.a.cfg.DrainTimeout)
		d.linef("closed the old public port %d", d.prev.Port)
	}
}

func (r *proxyRouting) adopt(a *Agent, app *store.App, backends []proxy.Backend) (bool, error) {
	if len(app.Domains) > 0 {
		if err := a.serveDomains(app.Name, domainsOf(app)); err != nil {
			return false, fmt.Errorf("cannot serve its domains: %w", err)
		}
	} else if err := a.router.Listen(app.Name, app.Port); err != nil {
		return false, fmt.Errorf("cannot listen on port %d: %w", app.Port, err)
	}
	var addrs []string
	for _, b := range backends {
		addrs = append(addrs, b.Addr)
	}
	cur := a.router.Targets(app.Name)
	slices.Sort(addrs)
	slices.Sort(cur)
	if len(backends) == 0 || slices.Equal(cur, addrs) {
		return false, nil
	}
	retired, err := a.router.Route(app.Name, backends, nil)
	if err != nil {
		return false, fmt.Errorf("cannot route to its instances: %w", err)
	}
	// What it took out are addresses the instances left.
	retired.Drain(context.Background(), time.Second, time.Second)
	return true, nil
}

func (r *proxyRouting) hold(a *Agent, app, addr string, in bool) bool {
	a.router.SetHealthy(app, addr, in)
	return true
}

// directRouting is ProxyServer none: the one container publishes the
// app's port itself, so the old container stops before the new one
// starts (a deploy has downtime), and there is nothing to balance, split
// or drain.
type directRouting struct {
	// proxyHeld: the proxy serves the app's port now; it closes before
	// the first new instance starts.
	proxyHeld bool
	// closeOld: as proxyRouting's.
	closeOld bool
	// cleared is set once the port is free for the new container.
	cleared bool
}

func (r *directRouting) most() int                              { return 1 }
func (r *directRouting) splits() bool                           { return false }
func (r *directRouting) hold(*Agent, string, string, bool) bool { return false }

func (r *directRouting) open(d *deployment) error { return d.directRefused() }

// directRefused refuses ProxyServer none for an app with domains: only
// the proxy serves by domain.
func (d *deployment) directRefused() error {
	if len(d.app.Domains) > 0 {
		return fmt.Errorf("%w: ProxyServer none publishes the container's port %d itself, so %s cannot be served by domain (%s): remove its domains (`sprout domains rm`), or drop ProxyServer none from .ebextensions", ErrInvalid, d.app.Port, d.app.Name, strings.Join(d.app.Domains, ", "))
	}
	return nil
}

func (r *directRouting) adopt(*Agent, *store.App, []proxy.Backend) (bool, error) { return false, nil }

func (r *directRouting) publish(ctx context.Context, x *executor) (int, error) {
	d, a := x.d, x.d.a
	if !r.cleared {
		if r.proxyHeld {
			// Undone newest first: the old instances start again, are
			// routed, and the port opens.
			var ids []string
			for _, name := range x.routed {
				ids = append(ids, x.inst[name].ContainerID)
			}
			if err := d.j.record(store.Undo{Kind: store.UndoListen, Port: d.app.Port, Label: d.prev.Serving}); err != nil {
				return 0, err
			}
			if err := d.j.record(store.Undo{Kind: store.UndoRoute, Containers: ids, Label: d.prev.Serving}); err != nil {
				return 0, err
			}
			a.router.Close(d.app.Port, a.cfg.DrainTimeout)
		}
		for _, name := range slices.Clone(x.routed) {
			if err := x.stop(ctx, name); err != nil {
				return 0, err
			}
		}
		if len(x.routed) > 0 {
			d.linef("port %d is down until %s serves (ProxyServer none)", d.app.Port, d.v.Label)
		}
		r.cleared = true
	}
	return d.app.Port, nil
}

func (r *directRouting) route(context.Context, *executor, []proxy.Backend, map[string]int) (*proxy.Retired, bool, error) {
	return &proxy.Retired{}, false, nil
}

func (r *directRouting) leave(d *deployment) {
	closeOldPort(d, r.closeOld)
	d.settleDomains()
	if r.proxyHeld {
		d.linef("the proxy no longer serves port %d", d.app.Port)
	}
}

// serveDomains serves the app by its domains for a rollout, before
// anything is built, so that a clash or a shared port that cannot open
// fails the deploy first. While the rollout runs, the domains of the
// serving version are served too (its requests go to the same app);
// undoing it serves the app as before.
func (d *deployment) serveDomains() error {
	var before store.App
	if d.prev.Serving != "" {
		before = *d.prev
	}
	names := d.app.Domains
	for _, n := range before.Domains {
		if !slices.Contains(names, n) {
			names = append(slices.Clone(names), n)
		}
	}
	during := domainsOf(d.app)
	during.Names = names
	if err := d.a.serveDomains(d.app.Name, during); err != nil {
		return err
	}
	if slices.Equal(before.Domains, d.app.Domains) && before.HTTPS == d.app.HTTPS {
		return nil // nothing to undo
	}
	return d.j.record(store.Undo{Kind: store.UndoDomains, Domains: before.Domains, HTTPS: before.HTTPS, Label: d.v.Label})
}

// settleDomains serves the app by exactly its domains once its rollout
// stands: those only the old version had go (and with the last one, its
// place on the shared ports).
func (d *deployment) settleDomains() {
	if len(d.app.Domains) == 0 && (d.prev.Serving == "" || len(d.prev.Domains) == 0) {
		return
	}
	if err := d.a.serveDomains(d.app.Name, domainsOf(d.app)); err != nil {
		d.a.log.Error("serve the app by its domains", "app", d.app.Name, "error", err)
		return
	}
	if len(d.app.Domains) > 0 && !slices.Equal(d.app.Domains, d.prev.Domains) {
		d.linef("served at %s", strings.Join(d.app.Domains, ", "))
	}
	if len(d.app.Domains) == 0 {
		d.linef("no longer served by domain (%s)", strings.Join(d.prev.Domains, ", "))
	}
}
