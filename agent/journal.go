package agent

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/proxy"
	"github.com/sprout-paas/sprout/runtime"
	"github.com/sprout-paas/sprout/store"
)

// journal is a running rollout's undo log. Each step writes how to undo
// it before it runs (or, for what lives only in this process's memory,
// such as a route or a listening port, right after), and the journal is
// kept in the store, so that a failure, an abort and an agent restarted
// after a crash all undo a rollout the same way: by replaying it, newest
// entry first. Once the rollout is committed the journal is deleted and
// nothing of it is undone.
type journal struct {
	a   *Agent
	rec store.Journal
	// committed is set once the new version serves for good.
	committed bool
}

func (a *Agent) newJournal(app, op, label string) *journal {
	return &journal{a: a, rec: store.Journal{App: app, Op: op, Label: label, Started: time.Now()}}
}

// record adds an entry and writes the journal.
func (j *journal) record(u store.Undo) error {
	j.rec.Entries = append(j.rec.Entries, u)
	return j.a.store.PutJournal(&j.rec)
}

// commit ends the journal: from here on the rollout stands.
func (j *journal) commit() {
	j.committed = true
	if err := j.a.store.DeleteJournal(j.rec.App); err != nil {
		j.a.log.Error("delete rollout journal", "app", j.rec.App, "error", err)
	}
}

// undo replays the journal, newest entry first, and deletes it.
func (j *journal) undo(ctx context.Context, p Progress) {
	j.a.replay(ctx, &j.rec, true, p)
}

// undoInterrupted replays the journals of rollouts that a stop of the
// agent interrupted, before anything else is restored: the containers
// they started are removed and those they stopped run again. Routes and
// ports lived in the stopped process only; restore makes them anew.
func (a *Agent) undoInterrupted(ctx context.Context) error {
	recs, err := a.store.Journals()
	if err != nil {
		return err
	}
	for _, rec := range recs {
		a.event(rec.App, rec.Label, "restore", "undoing the %s of %s that the agent's stop interrupted (%d steps)", rec.Op, rec.Label, len(rec.Entries))
		a.replay(ctx, rec, false, &logProgress{log: a.log.With("app", rec.App, "op", "undo")})
	}
	return nil
}

// replay undoes a rollout from its journal, newest entry first, and
// deletes the journal. Every entry is tried, whatever the others do.
// Without live, the routes and ports are left alone: they belonged to a
// process that is gone.
func (a *Agent) replay(ctx context.Context, rec *store.Journal, live bool, p Progress) {
	for i := len(rec.Entries) - 1; i >= 0; i-- {
		u := rec.Entries[i]
		if !live && u.Kind != store.UndoRemove && u.Kind != store.UndoRestart {
			continue
		}
		if !live {
			u.Routed = false
		}
		switch u.Kind {
		case store.UndoRoute:
			backends := make([]proxy.Backend, 0, len(u.Addrs))
			for _, addr := range u.Addrs {
				backends = append(backends, proxy.Backend{Addr: addr, Version: u.Label})
			}
			if len(u.Containers) > 0 {
				backends = a.backendsOf(ctx, u.Containers)
			}
			retired, err := a.router.Route(rec.App, backends, nil)
			if err != nil {
				a.log.Error("route back", "app", rec.App, "error", err)
				continue
			}
			if len(backends) > 0 {
				var versions []string
				for _, b := range backends {
					if b.Version != "" && !slices.Contains(versions, b.Version) {
						versions = append(versions, b.Version)
					}
				}
				p.Line(fmt.Sprintf("traffic went back to %d instance(s) of %s", len(backends), cmp.Or(strings.Join(versions, " and "), u.Label)))
			}
			retired.Drain(ctx, a.cfg.DrainTimeout, a.cfg.StreamGrace)
		case store.UndoRemove:
			// Written down by name before the container existed: a
			// container of another agent may bear the name.
			if err := a.removeOwnContainer(ctx, rec.App, u.Label, u.Container); err != nil {
				a.log.Warn("remove the container of an undone rollout", "app", rec.App, "container", u.Container, "error", err)
			}
		case store.UndoRestart:
			a.restartContainer(ctx, rec.App, u)
		case store.UndoClose:
			a.router.Close(u.Port, time.Second)
		case store.UndoListen:
			if err := a.router.Listen(rec.App, u.Port); err != nil {
				a.event(rec.App, u.Label, "deploy-failed", "could not listen on port %d again: %v", u.Port, err)
			}
		case store.UndoDomains:
			d := proxy.Domains{Names: u.Domains, NoRedirect: u.HTTPS.NoRedirect, HSTSMaxAge: u.HTTPS.HSTSMaxAge}
			if err := a.serveDomains(rec.App, d); err != nil {
				a.event(rec.App, u.Label, "deploy-failed", "could not serve the app by its domains (%s) again: %v", orNone(u.Domains), err)
			}
		}
	}
	if err := a.store.DeleteJournal(rec.App); err != nil {
		a.log.Error("delete rollout journal", "app", rec.App, "error", err)
	}
}

// backendsOf looks up the addresses and versions of the containers that
// run.
func (a *Agent) backendsOf(ctx context.Context, ids []string) []proxy.Backend {
	var out []proxy.Backend
	for _, id := range ids {
		if c, err := a.rt.Container(ctx, id); err == nil && c.Running && c.Addr != "" {
			out = append(out, proxy.Backend{Addr: c.Addr, Version: c.Labels[runtime.LabelLabel]})
		}
	}
	return out
}

// restartContainer starts a container that a rollout stopped again, waits
// until it passes its health check (so that the route an older entry puts
// back sends it nothing it cannot answer), and routes to it when it was
// routed alone.
func (a *Agent) restartContainer(ctx context.Context, app string, u store.Undo) {
	if err := a.rt.Restart(ctx, u.Container, a.cfg.StopGrace); err != nil {
		a.event(app, u.Label, "deploy-failed", "could not start %s again: %v", u.Label, err)
		return
	}
	if err := a.waitRestarted(ctx, app, u); err != nil {
		a.event(app, u.Label, "deploy-failed", "%s was started again but is not healthy yet: %v", u.Label, err)
	}
	if u.Routed {
		a.router.Route(app, a.backendsOf(ctx, []string{u.Container}), nil)
	}
	a.event(app, u.Label, "deploy-failed", "started %s again after the failed deploy", u.Label)
}

// waitRestarted waits until a restarted container of version u.Label
// passes the app's health check.
func (a *Agent) waitRestarted(ctx context.Context, app string, u store.Undo) error {
	st, err := a.store.App(app)
	if err != nil {
		return err
	}
	v, err := a.store.Version(app, u.Label)
	if err != nil {
		return err
	}
	c, err := a.rt.Container(ctx, u.Container)
	if err != nil {
		return err
	}
	s := a.healthFor(st, v)
	probe, _ := a.probeFor(s, v.HasHealthcheck, c.ID, c.Addr, v.ContainerPort)
	return health.Wait(ctx, probe, s, nil, nil)
}
