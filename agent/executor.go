package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/platform"
	"github.com/sprout-paas/sprout/proxy"
	"github.com/sprout-paas/sprout/rollout"
	"github.com/sprout-paas/sprout/runtime"
	"github.com/sprout-paas/sprout/store"
)

// The executor runs a rollout plan (package rollout) on this host: each
// batch's steps, from a few primitives (start instances, wait until they
// are healthy, route, drain, retire), each recording its undo in the
// deployment's journal before it runs. A failed step ends the rollout, and
// fail replays the journal: every instance goes back to the version that
// was serving, with its traffic, automatically.

// executor carries one plan's run.
type executor struct {
	d      *deployment
	env    map[string]string
	mounts []runtime.Mount
	// inst holds every instance the rollout knows, old and new, by name
	// (the plan's instance IDs are container names).
	inst map[string]*instanceState
	// routed are the names of the instances in the rotation, in order,
	// and split the versions' shares of requests, when set.
	routed []string
	split  map[string]int
	// batch are the instances the current batch started.
	batch []string
	// started and stopped are the instances this rollout started, and the
	// old ones its retire steps stopped (removed once it commits).
	started, stopped []string
	// stopping are the retire steps' stops under way, and stopErrs
	// their failures.
	stopping sync.WaitGroup
	stopErrs []error
	mu       sync.Mutex // guards d.p and stopErrs while steps run side by side
}

type instanceState struct {
	store.Instance
	addr string
}

// rolloutSettings is the app's deployment policy: its own settings over
// the bundle's .ebextensions over the defaults.
func rolloutSettings(app *store.App, v *store.Version) (rollout.Settings, error) {
	s := rollout.Defaults()
	bundle := v.Options.Deploy
	var err error
	if p := cmp.Or(app.Rollout.Policy, bundle.DeploymentPolicy); p != "" {
		if s.Policy, err = rollout.ParsePolicy(p); err != nil {
			return s, err
		}
	}
	if t := cmp.Or(app.Rollout.BatchSizeType, bundle.BatchSizeType); t != "" {
		if s.BatchSizeType, err = rollout.ParseBatchSizeType(t); err != nil {
			return s, err
		}
	}
	if n := cmp.Or(app.Rollout.BatchSize, bundle.BatchSize); n > 0 {
		s.BatchSize = n
	}
	if n := cmp.Or(app.Rollout.NewVersionPercent, bundle.NewVersionPercent); n > 0 {
		s.NewVersionPercent = n
	}
	if t := cmp.Or(app.Rollout.EvaluationTime, bundle.EvaluationTime); t > 0 {
		s.EvaluationTime = t
	}
	return s, s.Validate()
}

// runPlan plans the rollout of d.v on the app's instances and runs it.
func (d *deployment) runPlan(ctx context.Context, env map[string]string, config bool) error {
	a := d.a
	x := &executor{d: d, env: env, inst: map[string]*instanceState{}}
	var current []rollout.Instance
	for _, in := range d.prevInstances(ctx) {
		x.inst[in.Name] = in
		x.routed = append(x.routed, in.Name)
		current = append(current, rollout.Instance{ID: in.Name, Label: in.Label, Healthy: in.addr != "", StartedAt: in.StartedAt})
	}
	settings, err := rolloutSettings(d.app, d.v)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if settings.Policy == rollout.TrafficSplitting && !d.routing.splits() {
		d.linef("ProxyServer none cannot share requests between two versions: TrafficSplitting runs as AllAtOnce")
		settings.Policy = rollout.AllAtOnce
	}
	var plan rollout.Plan
	if d.resizes() && len(current) > 0 {
		plan, err = rollout.Scale(settings, current, d.app.InstanceCount())
	} else {
		plan, err = rollout.Deploy(settings, d.v.Label, current, d.app.InstanceCount())
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	for _, line := range strings.Split(plan.String(), "\n") {
		d.linef("plan: %s", strings.TrimSpace(line))
	}
	if x.mounts, err = a.mounts(ctx, d.app, d.v); err != nil {
		return err
	}
	// The rollout stands once its last route step has run (the new
	// instances take every request they will): from there on it finishes
	// even if the client goes away or the agent is stopping, and an abort
	// is too late; what is left drains and stops old instances.
	lastRoute := [2]int{-1, -1}
	for i, b := range plan.Batches {
		for j, st := range b.Steps {
			if st.Op == rollout.OpRoute {
				lastRoute = [2]int{i, j}
			}
		}
	}
	stood := false
	stand := func() error {
		if stood {
			return nil
		}
		if err := a.stand(d.app.Name); err != nil {
			return err
		}
		stood, ctx = true, context.WithoutCancel(ctx)
		return nil
	}
	gated := false
	batches := func() error {
		for i, b := range plan.Batches {
			if len(plan.Batches) > 1 {
				d.linef("batch %d/%d: %s", i+1, len(plan.Batches), b.String())
			}
			x.batch = nil
			for j, st := range b.Steps {
				if st.Op == rollout.OpRoute && !gated {
					// An environment's Immutable rollout: every host has
					// its new instances healthy before any takes traffic.
					gated = true
					if err := passGate(ctx); err != nil {
						return err
					}
				}
				err := x.step(ctx, st)
				if err == nil && [2]int{i, j} == lastRoute {
					err = stand()
				}
				if err != nil {
					if len(plan.Batches) > 1 {
						return fmt.Errorf("batch %d/%d: %w", i+1, len(plan.Batches), err)
					}
					return err
				}
			}
		}
		return nil
	}
	// Whatever happens, the old instances being stopped have stopped
	// before the rollout is undone or goes on.
	err = batches()
	if serr := x.settle(); err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	if err := stand(); err != nil {
		return err
	}
	if d.runsHooks() {
		// A failing postdeploy hook undoes the rollout: the old instances
		// run again and get their traffic back.
		if err := d.runHooks(ctx, platform.StagePostdeploy, config, env); err != nil {
			return err
		}
	}
	// From here on the new instances stand: what follows removes the old
	// ones and records, and a failure there is reported, not undone.
	d.j.commit()
	d.begin(StepRetire)
	for _, name := range x.started {
		if err := a.rt.KeepRunning(ctx, x.inst[name].ContainerID); err != nil {
			d.linef("warning: %v; the engine will not restart %s if it crashes", err, name)
		}
	}
	for _, name := range x.stopped {
		in := x.inst[name]
		a.archiveLogs(ctx, d.app.Name, in.Label, in.ContainerID)
		if err := a.rt.Remove(ctx, in.ContainerID); err != nil {
			d.linef("warning: removing %s: %v", name, err)
		}
	}
	if len(x.stopped) > 0 {
		d.linef("removed the containers of %s", strings.Join(x.stopped, ", "))
	}
	// Instances that had died (a recovery replaces them) go too.
	for _, id := range d.prev.ServingIDs() {
		if !slices.ContainsFunc(x.routed, func(n string) bool { return x.inst[n].ContainerID == id }) {
			a.rt.Remove(ctx, id)
		}
	}
	d.app.Instances = d.app.Instances[:0]
	for _, name := range x.routed {
		d.app.Instances = append(d.app.Instances, x.inst[name].Instance)
	}
	if len(d.app.Instances) > 0 {
		d.app.ContainerID = d.app.Instances[0].ContainerID
	}
	return nil
}

// prevInstances lists the app's instances that run now, with their
// addresses.
func (d *deployment) prevInstances(ctx context.Context) []*instanceState {
	var out []*instanceState
	for _, in := range d.prev.InstanceList() {
		c, err := d.a.rt.Container(ctx, in.ContainerID)
		if err != nil || !c.Running || c.Addr == "" {
			continue // gone: nothing to route or retire
		}
		if in.Name == "" {
			in.Name = c.Name
		}
		out = append(out, &instanceState{Instance: in, addr: c.Addr})
	}
	return out
}

// step runs one primitive.
func (x *executor) step(ctx context.Context, st rollout.Step) error {
	d := x.d
	switch st.Op {
	case rollout.OpStart:
		d.begin(StepStart)
		return x.start(ctx, st.N)
	case rollout.OpWaitHealthy:
		d.begin(StepHealth)
		return x.waitHealthy(ctx)
	case rollout.OpRoute:
		d.begin(StepSwap)
		next := slices.Clone(x.routed)
		var split map[string]int
		switch {
		case st.Percent == 100:
			next = slices.Clone(x.started)
		case st.Percent > 0 && d.prev.Serving != "" && d.prev.Serving != d.v.Label:
			// A canary: the new version takes its share of requests
			// beside the old one.
			next = append(next, x.batch...)
			split = map[string]int{d.v.Label: st.Percent, d.prev.Serving: 100 - st.Percent}
		default:
			next = append(next, x.batch...)
		}
		return x.route(ctx, next, split)
	case rollout.OpDrain:
		d.begin(StepDrain)
		next := slices.DeleteFunc(slices.Clone(x.routed), func(n string) bool { return slices.Contains(st.IDs, n) })
		return x.route(ctx, next, nil)
	case rollout.OpEvaluate:
		d.begin(StepEvaluate)
		return x.evaluate(ctx, st.For)
	case rollout.OpRetire:
		d.begin(StepRetire)
		// Drained already: they stop while the rollout goes on (the next
		// batch starts beside them), and the rollout waits for them
		// before it ends either way.
		for _, name := range st.IDs {
			if err := x.stopLater(ctx, name); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("the plan has a step this agent cannot run: %s", st.Op)
	}
	return nil
}

// stop stops an old instance, keeping its container so that undoing the
// rollout starts it again; an instance already stopped stays so.
func (x *executor) stop(ctx context.Context, name string) error {
	if err := x.stopLater(ctx, name); err != nil {
		return err
	}
	return x.settle()
}

// stopLater stops an old instance, out of the rotation, in the
// background; settle waits for it. Its undo is recorded first, as stop's.
func (x *executor) stopLater(ctx context.Context, name string) error {
	d, a := x.d, x.d.a
	if slices.Contains(x.stopped, name) {
		return nil
	}
	in := x.inst[name]
	if err := d.j.record(store.Undo{Kind: store.UndoRestart, Container: in.ContainerID, Label: in.Label}); err != nil {
		return err
	}
	x.stopped = append(x.stopped, name)
	d.linef("stopping %s (%s)", name, in.Label)
	x.stopping.Go(func() {
		if err := a.rt.Stop(ctx, in.ContainerID, a.cfg.StopGrace); err != nil {
			x.mu.Lock()
			defer x.mu.Unlock()
			x.stopErrs = append(x.stopErrs, fmt.Errorf("stop %s: %w", name, err))
		}
	})
	return nil
}

// settle waits until the instances being stopped have stopped, and says
// whether one could not be.
func (x *executor) settle() error {
	x.stopping.Wait()
	x.mu.Lock()
	defer x.mu.Unlock()
	err := errors.Join(x.stopErrs...)
	x.stopErrs = nil // said once
	return err
}

// start starts n instances of the new version, out of the rotation, side
// by side: the engine creates and starts containers concurrently.
func (x *executor) start(ctx context.Context, n int) error {
	d, a := x.d, x.d.a
	port, err := d.routing.publish(ctx, x)
	if err != nil {
		return err
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("sprout-%s-%s-%s", d.app.Name, d.v.Label, randomID(3))
		if err := d.j.record(store.Undo{Kind: store.UndoRemove, Container: names[i], Label: d.v.Label}); err != nil {
			return err
		}
	}
	cs := make([]*runtime.Container, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	// An abort or a gone client does not cut a create short: the engine
	// would finish it after the undo looked for the container by name,
	// and leave it behind. The cancel is seen right after.
	run := context.WithoutCancel(ctx)
	for i, name := range names {
		wg.Go(func() { cs[i], errs[i] = a.rt.Run(run, d.containerSpec(name, x.env, x.mounts, port)) })
	}
	wg.Wait()
	for i, name := range names {
		if errs[i] != nil {
			continue
		}
		c := cs[i]
		x.inst[name] = &instanceState{Instance: store.Instance{ContainerID: c.ID, Name: name, Label: d.v.Label, StartedAt: time.Now()}, addr: c.Addr}
		x.batch = append(x.batch, name)
		x.started = append(x.started, name)
		d.linef("started instance %s (%s) at %s", name, shortID(c.ID), c.Addr)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return context.Cause(ctx)
}

// waitHealthy waits until every instance of the batch passes its health
// check, side by side; the first that fails fails the batch.
func (x *executor) waitHealthy(ctx context.Context) error {
	d := x.d
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(x.batch))
	var wg sync.WaitGroup
	for i, name := range x.batch {
		in := x.inst[name]
		wg.Go(func() {
			who := ""
			if len(x.batch) > 1 {
				who = name + ": "
			}
			last, err := d.waitHealthy(ctx, &runtime.Container{ID: in.ContainerID, Name: name, Addr: in.addr}, who, x.line)
			x.mu.Lock()
			if last.After(d.lastPass) {
				d.lastPass = last
			}
			x.mu.Unlock()
			if err != nil {
				errs[i] = fmt.Errorf("%s%w", who, err)
				cancel()
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return errors.Join(errs...)
}

// line reports a line of one of the health waits running side by side.
func (x *executor) line(s string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.d.p.Line(s)
}

// route puts exactly the instances named in the rotation and drains the
// ones it took out. Undoing it routes back to the instances that were in
// the rotation before.
func (x *executor) route(ctx context.Context, names []string, split map[string]int) error {
	d, a := x.d, x.d.a
	if split == nil && x.split == nil && slices.Equal(names, x.routed) {
		return nil // a drain of instances a full switch already took out
	}
	var before []string
	for _, n := range x.routed {
		before = append(before, x.inst[n].ContainerID)
	}
	backends := make([]proxy.Backend, len(names))
	for i, n := range names {
		backends[i] = proxy.Backend{Addr: x.inst[n].addr, Version: x.inst[n].Label}
	}
	at := time.Now()
	retired, moved, err := d.routing.route(ctx, x, backends, split)
	if err != nil {
		return err
	}
	// Routes live in this process only, so the undo is written after the
	// route (a crash in between loses both), and the journal's disk write
	// stays out of the time from a passing check to traffic.
	if moved {
		if err := d.j.record(store.Undo{Kind: store.UndoRoute, Containers: before, Label: d.prev.Serving}); err != nil {
			return err
		}
	}
	added := slices.ContainsFunc(names, func(n string) bool { return !slices.Contains(x.routed, n) })
	x.routed, x.split = names, split
	var labels []string
	serving := 0
	for _, n := range names {
		if slices.Contains(x.stopped, n) {
			continue // a container that held the port, stopped for the proxy to take it
		}
		serving++
		if l := x.inst[n].Label; !slices.Contains(labels, l) {
			labels = append(labels, l)
		}
	}
	msg := fmt.Sprintf("traffic on port %d now goes to %d instance(s) of %s", d.app.Port, serving, strings.Join(labels, " and "))
	if !moved {
		msg = fmt.Sprintf("port %d now goes straight to %s's container (ProxyServer none)", d.app.Port, strings.Join(labels, " and "))
	}
	if split != nil {
		msg += fmt.Sprintf(" (%d%% of requests to %s)", split[d.v.Label], d.v.Label)
	}
	if added && !d.lastPass.IsZero() && at.Sub(d.lastPass) < time.Minute {
		msg += fmt.Sprintf(", %s after the last passing check", at.Sub(d.lastPass).Round(10*time.Microsecond))
	}
	d.linef("%s", msg)
	if old := retired.Addrs(); len(old) > 0 {
		st := retired.Drain(context.WithoutCancel(ctx), a.cfg.DrainTimeout, a.cfg.StreamGrace)
		d.linef("drained %s in %s (%d requests cut at the deadline)", strings.Join(old, ", "), st.Waited.Round(time.Millisecond), st.Cut)
	}
	return nil
}

// evaluate lets the canary take its share of requests for the evaluation
// time, saying how both versions do as it goes, then judges it against
// the old version over the same window (rollout.Judge). A clearly worse
// canary fails the rollout, and its undo sends every request back to the
// old version.
func (x *executor) evaluate(ctx context.Context, span time.Duration) error {
	d, a := x.d, x.d.a
	newL, oldL := d.v.Label, d.prev.Serving
	if oldL == "" || oldL == newL {
		d.linef("nothing to compare %s with (the same version serves): no evaluation", newL)
		return nil
	}
	d.linef("evaluating %s against %s for %s", newL, oldL, span)
	start := time.Now()
	judge := func() rollout.Verdict {
		// Every bucket since the canary took requests, for both.
		w := time.Since(start) + health.Resolution
		return rollout.Judge(newL, a.tracker.VersionWindow(d.app.Name, newL).Stats(w), oldL, a.tracker.VersionWindow(d.app.Name, oldL).Stats(w))
	}
	every := min(max(span/5, time.Second), 30*time.Second)
	tick := time.NewTicker(every)
	defer tick.Stop()
	end := time.NewTimer(span)
	defer end.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-tick.C:
			d.linef("so far: %s", judge().Figures)
		case <-end.C:
			done = true
		}
	}
	v := judge()
	if v.Worse {
		return fmt.Errorf("canary %s rolled back: %s", newL, v.Reason)
	}
	d.linef("canary %s: %s", newL, v.Reason)
	return nil
}
