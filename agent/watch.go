package agent

import (
	"context"
	"runtime/debug"
	"strings"
	"time"

	"github.com/sprout-paas/sprout/store"
)

// WatchInterval is how often Watch looks at the serving containers.
const WatchInterval = 2 * time.Second

// Watch keeps the proxy pointed at each serving container while the agent
// runs: when the engine restarts a crashed container, it may come back on
// another address, and the route must follow it. It returns when ctx ends.
func (a *Agent) Watch(ctx context.Context) {
	a.everyServing(ctx, WatchInterval, "watcher", a.follow)
}

// follow re-routes app when one of its instances came back on another
// address.
func (a *Agent) follow(ctx context.Context, app *store.App) {
	backends := a.backendsOf(ctx, app.ServingIDs())
	if len(backends) == 0 {
		return
	}
	if moved, err := a.servingRouting(app).adopt(a, app, backends); err == nil && moved {
		var addrs []string
		for _, b := range backends {
			addrs = append(addrs, b.Addr)
		}
		a.event(app.Name, app.Serving, "restart", "instances of %s came back at %s; traffic follows them", app.Serving, strings.Join(addrs, ", "))
	}
}

// everyServing runs fn on each app with a serving container every
// interval, until ctx ends. Apps in the middle of an operation are skipped:
// the operation owns them. A panic is logged, not spread.
func (a *Agent) everyServing(ctx context.Context, interval time.Duration, name string, fn func(context.Context, *store.App)) {
	defer func() {
		if r := recover(); r != nil {
			a.log.Error(name+" panicked and stopped", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		apps, err := a.store.Apps()
		if err != nil {
			continue
		}
		for _, app := range apps {
			if app.ContainerID == "" {
				continue
			}
			unlock, ok := a.tryLock(app.Name)
			if !ok {
				continue
			}
			fn(ctx, app)
			unlock()
		}
	}
}

// tryLock takes an app's lock only if it is free.
// While an upgrade hands the agent over (Quiesce), none is free: the new
// process watches and monitors from then on.
func (a *Agent) tryLock(app string) (func(), bool) {
	a.mu.Lock()
	if a.quiesced {
		a.mu.Unlock()
		return nil, false
	}
	ch, ok := a.locks[app]
	if !ok {
		ch = make(chan struct{}, 1)
		a.locks[app] = ch
	}
	a.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, true
	default:
		return nil, false
	}
}
