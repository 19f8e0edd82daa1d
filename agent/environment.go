package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/sprout-paas/sprout/fleet"
	"github.com/sprout-paas/sprout/store"
)

// An environment is a set of hosts that share an S3 prefix (docs/fleet.md).
// Each agent of it runs RunEnvironment: it polls the environment's
// rollout.json, does what fleet.Desired tells this host (deploy, prepare,
// switch or roll back, each with the app's own policy on its own
// instances), writes its own report, and evaluates the rollout with
// fleet's pure state machine when it is its turn. Hosts never talk to
// each other; S3's conditional writes settle every race.

// EnvironmentHost says who this agent is in its environment.
type EnvironmentHost struct {
	// ID is the host's id: the EC2 instance id, the hostname, or the
	// config's host_id.
	ID string
	// Address is where the host serves its apps, for status.
	Address string
	// Version is the agent's version, for status.
	Version string
}

// envWork is one action this host is carrying out.
type envWork struct {
	act    fleet.Action
	phase  fleet.Phase // deploying, rolling-back, prepared, failed, or "" once done
	err    string
	cancel context.CancelFunc
	done   chan struct{}
	// proceed is closed when an Immutable rollout switches: the prepared
	// instances take traffic.
	proceed chan struct{}
}

// envState is what this host's part of the environment holds.
type envState struct {
	mu   sync.Mutex
	work map[string]*envWork // by app
	// healthySince is when each app's serving version was last seen
	// turning healthy.
	healthySince map[string]time.Time
	poke         chan struct{}
}

func (s *envState) init() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.work == nil {
		s.work, s.healthySince, s.poke = map[string]*envWork{}, map[string]time.Time{}, make(chan struct{}, 1)
	}
}

// wake makes the loop poll, report and evaluate now.
func (s *envState) wake() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// RunEnvironment takes part in the environment st until ctx ends.
func (a *Agent) RunEnvironment(ctx context.Context, st *fleet.Store, host EnvironmentHost) {
	s := &a.env
	s.init()
	var (
		last          fleet.HostReport
		lastWrite     time.Time
		lastEval      time.Time
		watchingSince time.Time
		seen          int64
		failing       string
	)
	for {
		r, _, err := st.Rollout(ctx)
		switch {
		case err != nil:
			watchingSince = time.Time{}
			if msg := err.Error(); msg != failing {
				failing = msg
				a.log.Warn("environment: cannot read the rollout; serving what is served", "env", st.URL(), "error", err)
			}
		default:
			failing = ""
			if watchingSince.IsZero() {
				watchingSince = time.Now()
			}
			if r != nil && r.Epoch > seen {
				seen = r.Epoch
			}
			if r != nil && r.Epoch >= seen {
				for _, act := range fleet.Desired(r, host.ID, a.envReport(r, host, seen)) {
					a.envAct(ctx, act)
				}
			}
			rep := a.envReport(r, host, seen)
			if !sameReport(rep, last) || time.Since(lastWrite) >= fleet.Heartbeat(r, rand.Float64()) {
				if err := st.Report(ctx, rep); err != nil {
					a.log.Warn("environment: cannot write this host's report", "env", st.URL(), "error", err)
				} else {
					last, lastWrite = rep, time.Now()
				}
			}
			if fleet.Evaluates(r, host.ID, time.Since(lastEval)) {
				lastEval = time.Now()
				out, err := st.Advance(ctx, watchingSince)
				if err != nil {
					a.log.Warn("environment: cannot evaluate the rollout", "env", st.URL(), "error", err)
				} else if out.Changed && out.Rollout != nil {
					a.event(out.Rollout.Release.App, out.Rollout.Release.Label, "fleet", "rollout %s: %s (%s)", out.Rollout.ID, out.Why, out.Rollout.Progress())
					s.wake() // act on it at once
				}
			}
		}
		t := time.NewTimer(fleet.PollInterval(r, rand.Float64()))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-s.poke:
			t.Stop()
		}
	}
}

// sameReport tells whether two reports say the same, whenever written and
// whatever their traffic figures (which move at every request; the
// heartbeat carries them).
func sameReport(a, b fleet.HostReport) bool {
	strip := func(r fleet.HostReport) fleet.HostReport {
		r.ReportedAt = time.Time{}
		apps := make(map[string]fleet.AppReport, len(r.Apps))
		for name, ar := range r.Apps {
			ar.Traffic = nil
			apps[name] = ar
		}
		r.Apps = apps
		return r
	}
	return reflect.DeepEqual(strip(a), strip(b))
}

// envReport is this host's report: every app it serves or works on.
func (a *Agent) envReport(r *fleet.Rollout, host EnvironmentHost, seen int64) fleet.HostReport {
	s := &a.env
	rep := fleet.HostReport{Format: 1, Host: host.ID, Agent: host.Version, Address: host.Address, ReportedAt: time.Now(), Epoch: seen, Apps: map[string]fleet.AppReport{}}
	if r != nil {
		rep.Rollout = r.ID
	}
	apps, _ := a.store.Apps()
	s.mu.Lock()
	defer s.mu.Unlock()
	names := slices.Collect(maps.Keys(s.work))
	for _, app := range apps {
		if !slices.Contains(names, app.Name) {
			names = append(names, app.Name)
		}
	}
	for _, name := range names {
		ar := fleet.AppReport{Phase: fleet.PhaseIdle}
		app, _ := a.store.App(name)
		if app != nil && app.Serving != "" {
			ar.Serving, ar.Target = app.Serving, app.Serving
			if a.envUnhealthy(name) {
				ar.Phase = fleet.PhaseUnhealthy
				delete(s.healthySince, name)
			} else {
				ar.Phase = fleet.PhaseHealthy
				since, ok := s.healthySince[name]
				if !ok {
					since = app.ServingAt
					s.healthySince[name] = since
				}
				ar.HealthySince = since
			}
			w := a.tracker.VersionWindow(name, app.Serving).Stats(fleet.TrafficSpan(r))
			ar.Traffic = &fleet.Traffic{Label: app.Serving, Stats: w}
		}
		if w := s.work[name]; w != nil && w.phase != "" {
			ar.Target, ar.Phase, ar.Rollout, ar.Error = w.act.Release.Label, w.phase, w.act.Rollout, w.err
		}
		rep.Apps[name] = ar
	}
	return rep
}

// envUnhealthy tells whether the monitor finds an instance of app failing
// its checks (OutAfter in a row): a release that turns bad on a host
// stops the fleet's rollout.
func (a *Agent) envUnhealthy(app string) bool {
	for _, ih := range a.instanceHealth(app) {
		if ih.failures >= OutAfter {
			return true
		}
	}
	return false
}

// envAct starts carrying out act, first cancelling (and so undoing) what
// the host was doing for the app, unless it is that already. Switching a
// prepared release lets its rollout go on.
func (a *Agent) envAct(ctx context.Context, act fleet.Action) {
	s := &a.env
	app := act.Release.App
	s.mu.Lock()
	w := s.work[app]
	if w != nil && w.phase == fleet.PhasePrepared && act.Kind == fleet.ActSwitch && w.act.Release.Label == act.Release.Label {
		w.phase = fleet.PhaseDeploying
		close(w.proceed)
		s.mu.Unlock()
		a.event(app, act.Release.Label, "fleet", "switching to %s: %s", act.Release.Label, act.Why)
		return
	}
	s.mu.Unlock()
	if w != nil && w.cancel != nil {
		select {
		case <-w.done:
		default:
			w.cancel()
			<-w.done
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	phase := fleet.PhaseDeploying
	if act.Kind == fleet.ActRollBack {
		phase = fleet.PhaseRollingBack
	}
	w = &envWork{act: act, phase: phase, cancel: cancel, done: make(chan struct{}), proceed: make(chan struct{})}
	s.mu.Lock()
	s.work[app] = w
	s.mu.Unlock()
	a.event(app, act.Release.Label, "fleet", "%s %s: %s", act.Kind, act.Release.Label, act.Why)
	go func() {
		defer close(w.done)
		defer cancel()
		err := a.envDo(wctx, w)
		s.mu.Lock()
		if err != nil {
			w.phase, w.err = fleet.PhaseFailed, firstLine(err.Error())
		} else {
			w.phase = ""
			s.healthySince[app] = time.Now()
		}
		s.mu.Unlock()
		if err != nil {
			a.event(app, act.Release.Label, "fleet", "%s %s failed: %v", act.Kind, act.Release.Label, err)
		}
		s.wake()
	}()
}

// envDo serves act's release: a version the host still has is served
// again as a rollback does; any other is fetched from the environment's
// bundle. Preparing stops before the release takes traffic until the
// rollout switches.
func (a *Agent) envDo(ctx context.Context, w *envWork) error {
	rel := w.act.Release
	p := &logProgress{log: a.log.With("app", rel.App, "op", "fleet "+string(w.act.Kind))}
	ctx = WithStartedBy(ctx, "environment rollout ("+string(w.act.Kind)+")")
	if w.act.Kind == fleet.ActPrepare {
		ctx = withGate(ctx, func(ctx context.Context) error {
			a.env.mu.Lock()
			w.phase = fleet.PhasePrepared
			a.env.mu.Unlock()
			a.env.wake()
			a.event(rel.App, rel.Label, "fleet", "%s is ready beside the serving version; waiting for every host", rel.Label)
			select {
			case <-w.proceed:
				return nil
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		})
	}
	if app, err := a.store.App(rel.App); err == nil && app.Serving == rel.Label {
		return nil
	}
	if v, err := a.store.Version(rel.App, rel.Label); err == nil && v.Status != store.StatusFailed && v.Status != store.StatusPending && !v.ImagePruned {
		_, err := a.rollback(ctx, rel.App, rel.Label, rel.Env, false, p)
		return err
	}
	q := map[string][]string{}
	for k, v := range rel.Settings {
		q[k] = []string{v}
	}
	settings, err := ParseSettings(q)
	if err != nil {
		return fmt.Errorf("the release's settings: %w", err)
	}
	req := DeployRequest{App: rel.App, Label: rel.Label, From: rel.Bundle, Env: rel.Env, Settings: settings}
	if rel.Port != 0 {
		req.Settings.Port = &rel.Port
	}
	v, err := a.Deploy(ctx, req, p)
	if err == nil && rel.SHA256 != "" && v.SHA256 != "" && v.SHA256 != rel.SHA256 {
		return fmt.Errorf("the bundle fetched from %s has sha256 %s, not the %s the rollout names: it changed after upload", rel.Bundle, v.SHA256, rel.SHA256)
	}
	return err
}

// gateKey carries, in a rollout's context, what runs before its first
// route: an Immutable rollout across hosts waits there until every host
// is ready.
type gateKey struct{}

func withGate(ctx context.Context, gate func(context.Context) error) context.Context {
	return context.WithValue(ctx, gateKey{}, gate)
}

// passGate runs the context's gate, if any.
func passGate(ctx context.Context) error {
	if gate, ok := ctx.Value(gateKey{}).(func(context.Context) error); ok {
		if err := gate(ctx); err != nil {
			return fmt.Errorf("%w: %v", errNotSwitched, err)
		}
	}
	return nil
}

var errNotSwitched = errors.New("the environment did not switch to the prepared version")
