package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/runtime"
	"github.com/sprout-paas/sprout/store"
)

// The monitor checks each serving instance after its deploy, as Elastic
// Beanstalk's enhanced health does: it runs the app's health check, follows
// restarts and resource use, and restarts a container whose check keeps
// failing.

// Monitor defaults.
const (
	DefaultMonitorInterval = 5 * time.Second
	DefaultRestartAfter    = 3
)

// OutAfter is how many failed health checks in a row take an instance out
// of the proxy's rotation; its first passing check brings it back.
const OutAfter = 2

// appHealth is what the monitor knows of one app's serving instances.
type appHealth struct {
	mu        sync.Mutex
	instances map[string]*instanceHealth // by container ID
	status    string                     // last status the monitor computed
}

// instanceHealth is what the monitor knows of one instance.
type instanceHealth struct {
	name, label  string
	addr         string
	checksRun    bool
	failures     int // failed checks in a row
	failingSince time.Time
	lastCheck    health.Result
	restarts     []time.Time
	restartCount int // the engine's count, last seen
	usage        usageSample
	cpu          float64 // share of one CPU
	memory       uint64
	// out is set while the monitor holds the instance out of the proxy's
	// rotation; keptIn while it would have, but it was the last one in.
	out, keptIn bool
}

type usageSample struct{ cpu, system uint64 }

func (a *Agent) appHealth(app string) *appHealth {
	a.mu.Lock()
	defer a.mu.Unlock()
	h, ok := a.health[app]
	if !ok {
		h = &appHealth{instances: map[string]*instanceHealth{}}
		a.health[app] = h
	}
	return h
}

// instanceName is how events and causes name an instance.
func instanceName(in store.Instance) string {
	if in.Name != "" {
		return in.Name
	}
	return "container " + shortID(in.ContainerID)
}

// Monitor checks the serving instances every cfg.MonitorInterval until
// ctx ends, and records their status.
func (a *Agent) Monitor(ctx context.Context) {
	a.everyServing(ctx, a.cfg.MonitorInterval, "health monitor", a.check)
}

// check runs one round of the monitor on app, then records its status.
// It first points the route at instances that came back on another
// address (as the watcher does, which waits while the monitor holds the
// app), so that what the checks find applies to the routed address.
func (a *Agent) check(ctx context.Context, app *store.App) {
	a.follow(ctx, app)
	a.probeServing(ctx, app)
	a.noteStatus(ctx, app)
}

// probeServing checks every instance of app: its restarts, its resource
// use and its health check. An instance failing OutAfter checks in a row
// leaves the proxy's rotation (unless it is the last one in it) until a
// check passes, and one failing cfg.RestartAfter in a row is restarted.
func (a *Agent) probeServing(ctx context.Context, app *store.App) {
	h := a.appHealth(app.Name)
	h.mu.Lock()
	defer h.mu.Unlock()
	ins := app.InstanceList()
	seen := make(map[string]bool, len(ins))
	for _, in := range ins {
		seen[in.ContainerID] = true
		if h.instances[in.ContainerID] == nil {
			h.instances[in.ContainerID] = &instanceHealth{}
		}
		ih := h.instances[in.ContainerID]
		ih.name, ih.label = instanceName(in), in.Label
	}
	for id := range h.instances {
		if !seen[id] {
			delete(h.instances, id) // the instance is gone, and its history with it
		}
	}
	v, _ := a.store.Version(app.Name, app.Serving)
	hasHC := v != nil && v.HasHealthcheck
	r := routingOf(v)
	s := a.HealthSettings(app)
	var cpu float64
	var memory uint64
	var restarts int
	// The engine's answers take a while (a stats sample most): ask for
	// every instance at once, then check them in turn.
	engine := make([]engineView, len(ins))
	var wg sync.WaitGroup
	for i, in := range ins {
		wg.Go(func() {
			engine[i].state, engine[i].err = a.rt.State(ctx, in.ContainerID)
			engine[i].usage, engine[i].usageErr = a.rt.Usage(ctx, in.ContainerID)
		})
	}
	wg.Wait()
	for i, in := range ins {
		ih := h.instances[in.ContainerID]
		a.probeInstance(ctx, app, in.ContainerID, engine[i], ih, s, hasHC, r, h)
		cpu, memory, restarts = cpu+ih.cpu, memory+ih.memory, restarts+max(ih.restartCount, 0)
	}
	a.metrics.Usage(app.Name, cpu, memory, restarts)
}

// engineView is what the engine said of an instance this round.
type engineView struct {
	state    runtime.State
	err      error
	usage    runtime.Usage
	usageErr error
}

// probeInstance runs one round of the monitor on the instance in
// container id, of which the engine said e. h's lock is held.
func (a *Agent) probeInstance(ctx context.Context, app *store.App, id string, e engineView, ih *instanceHealth, s health.Settings, hasHC bool, r routing, h *appHealth) {
	now := time.Now()
	st := e.state
	if e.err != nil {
		return
	}
	if st.RestartCount > ih.restartCount && ih.restartCount >= 0 {
		for range st.RestartCount - ih.restartCount {
			ih.restarts = append(ih.restarts, now)
		}
		a.event(app.Name, ih.label, "restart", "the engine restarted instance %s of %s (exit code %d)", ih.name, ih.label, st.ExitCode)
	}
	ih.restartCount = st.RestartCount
	if u := e.usage; e.usageErr == nil {
		if ih.usage.system > 0 && u.System > ih.usage.system && u.CPU >= ih.usage.cpu {
			ih.cpu = float64(u.CPU-ih.usage.cpu) / float64(u.System-ih.usage.system) * float64(max(u.CPUs, 1))
		}
		ih.usage, ih.memory = usageSample{u.CPU, u.System}, u.Memory
	}
	if !st.Running || st.Addr == "" {
		return
	}
	if st.Addr != ih.addr && ih.out {
		// It came back on another address: hold the new one out too.
		r.hold(a, app.Name, st.Addr, false)
	}
	ih.addr = st.Addr
	probe, _ := a.probeFor(s, hasHC, id, st.Addr, 0)
	pctx, cancel := context.WithTimeout(ctx, s.Timeout)
	t0 := time.Now()
	perr := probe.Probe(pctx)
	cancel()
	ih.checksRun = true
	ih.lastCheck = health.Result{At: t0, Took: time.Since(t0)}
	a.metrics.Check(app.Name, perr == nil, ih.lastCheck.Took)
	if perr == nil {
		switch {
		case ih.out:
			r.hold(a, app.Name, st.Addr, true)
			a.event(app.Name, ih.label, "health", "instance %s of %s passes its health check again; back in the rotation", ih.name, ih.label)
		case !ih.failingSince.IsZero():
			a.event(app.Name, ih.label, "health", "instance %s of %s passes its health check again", ih.name, ih.label)
		}
		ih.failures, ih.failingSince, ih.out, ih.keptIn = 0, time.Time{}, false, false
		return
	}
	ih.lastCheck.Err = perr.Error()
	ih.failures++
	if ih.failingSince.IsZero() {
		ih.failingSince = t0
	}
	if ih.failures >= OutAfter && !ih.out && !ih.keptIn {
		switch {
		case h.othersInRotation(ih) == 0:
			// A 502 is no better than a slow or failing answer.
			a.event(app.Name, ih.label, "health", "instance %s of %s failing its health check: %v; kept in the rotation, the last instance in it", ih.name, ih.label, perr)
			ih.keptIn = true
		case !r.hold(a, app.Name, st.Addr, false):
			a.event(app.Name, ih.label, "health", "instance %s of %s failing its health check: %v", ih.name, ih.label, perr)
			ih.keptIn = true
		default:
			a.event(app.Name, ih.label, "health", "instance %s of %s failing its health check: %v; out of the rotation", ih.name, ih.label, perr)
			ih.out = true
		}
	}
	if a.cfg.RestartAfter > 0 && ih.failures >= a.cfg.RestartAfter {
		a.event(app.Name, ih.label, "restart", "restarting instance %s of %s after %d failed health checks (last: %v)", ih.name, ih.label, ih.failures, perr)
		if err := a.rt.Restart(ctx, id, a.cfg.StopGrace); err != nil {
			a.log.Error("restart unhealthy instance", "app", app.Name, "instance", ih.name, "error", err)
			return
		}
		ih.restarts = append(ih.restarts, time.Now())
		ih.failures, ih.keptIn = 0, false
		ih.restartCount = -1 // the engine counts its own restarts only; resync next round
	}
}

// othersInRotation counts the instances other than ih that take requests
// as far as the monitor knows: running, and not held out.
func (h *appHealth) othersInRotation(ih *instanceHealth) int {
	n := 0
	for _, o := range h.instances {
		if o != ih && !o.out && o.addr != "" && o.failures < OutAfter {
			n++
		}
	}
	return n
}

// noteStatus computes app's status (which also updates its metric) and
// records a transition as an event.
func (a *Agent) noteStatus(ctx context.Context, app *store.App) {
	r := a.Health(ctx, app)
	h := a.appHealth(app.Name)
	h.mu.Lock()
	prev := h.status
	h.status = r.Status
	h.mu.Unlock()
	if prev != "" && prev != r.Status {
		msg := fmt.Sprintf("health %s → %s", prev, r.Status)
		if len(r.Causes) > 0 {
			msg += ": " + strings.Join(r.Causes, "; ")
		}
		a.event(app.Name, app.Serving, "health", "%s", msg)
	}
}

// Report is an app's enhanced health, as `sprout health` shows it.
type Report struct {
	App     string   `json:"app"`
	Serving string   `json:"serving,omitempty"`
	Status  string   `json:"status"`
	Causes  []string `json:"causes,omitempty"`
	// Stats, RateRPS: the app's requests, all instances together.
	Stats   health.Stats  `json:"stats"`
	RateRPS float64       `json:"rate_rps"`
	Uptime  time.Duration `json:"uptime"` // the first instance's
	// Restarts, CPU and Memory are the sums over the instances.
	Restarts int     `json:"restarts"`
	CPU      float64 `json:"cpu"`
	Memory   uint64  `json:"memory_bytes"`
	// LastCheck is the latest check of any instance, failing ones first.
	LastCheck health.Result    `json:"last_check"`
	Instances []InstanceHealth `json:"instances,omitempty"`
}

// InstanceHealth is one instance's part of a Report.
type InstanceHealth struct {
	Name         string        `json:"name"`
	Label        string        `json:"label"`
	ContainerID  string        `json:"container_id"`
	State        string        `json:"state"`
	Status       string        `json:"status"`
	LastCheck    health.Result `json:"last_check"`
	FailingSince time.Time     `json:"failing_since,omitzero"`
	CPU          float64       `json:"cpu"`
	Memory       uint64        `json:"memory_bytes"`
	Restarts     int           `json:"restarts"`
	InRotation   bool          `json:"in_rotation"`
}

// Health computes an app's status from its requests and from each
// instance's checks and container, by the configured rules: the worst of
// the app's status and its instances', with a cause per failing instance
// naming it.
func (a *Agent) Health(ctx context.Context, app *store.App) Report {
	deploying := a.deploying(app.Name)
	now := time.Now()
	stats := a.tracker.Window(app.Name).Stats(a.cfg.Rules.Window)
	r := Report{App: app.Name, Serving: app.Serving, Stats: stats, RateRPS: stats.Rate()}
	in := health.Input{Serving: app.Serving != "", Deploying: deploying, Container: "running", Stats: stats, Now: now}
	ins := app.InstanceList()
	rotation := a.router.InRotation(app.Name)
	if len(ins) == 0 {
		in.Container = "none"
		if app.Serving != "" {
			in.Container = "missing"
		}
	}
	type instanceView struct {
		cs ContainerStatus
		ih instanceHealth
	}
	views := make([]instanceView, len(ins))
	for i, inst := range ins {
		views[i].cs = a.ContainerStatus(ctx, &store.App{ContainerID: inst.ContainerID})
	}
	h := a.appHealth(app.Name)
	h.mu.Lock()
	for i, inst := range ins {
		if ih := h.instances[inst.ContainerID]; ih != nil {
			views[i].ih = *ih
			views[i].ih.restarts = slices.Clone(ih.restarts)
		}
	}
	h.mu.Unlock()

	status, causes := health.Ok, []string(nil)
	for i, inst := range ins {
		cs, ih := views[i].cs, views[i].ih
		ii := health.Input{Serving: app.Serving != "", Container: cs.State, CheckFailingSince: ih.failingSince, ChecksRun: ih.checksRun, Now: now}
		for _, t := range ih.restarts {
			if now.Sub(t) <= a.cfg.Rules.RestartWindow {
				ii.Restarts++
			}
		}
		s, cc := health.Evaluate(ii, a.cfg.Rules)
		if s == health.NoData {
			s, cc = health.Ok, nil // nothing checked yet: the app's status says so
		}
		in.ChecksRun = in.ChecksRun || ih.checksRun
		status = health.Worst(status, s)
		for _, c := range cc {
			causes = append(causes, "instance "+instanceName(inst)+": "+c)
		}
		r.Restarts += cs.RestartCount
		r.CPU += ih.cpu
		r.Memory += ih.memory
		if i == 0 && !cs.StartedAt.IsZero() && cs.State == "running" {
			r.Uptime = now.Sub(cs.StartedAt).Round(time.Second)
		}
		if tellsMore(ih.lastCheck, r.LastCheck) {
			r.LastCheck = ih.lastCheck
		}
		r.Instances = append(r.Instances, InstanceHealth{
			Name: instanceName(inst), Label: inst.Label, ContainerID: inst.ContainerID, State: cs.State, Status: s,
			LastCheck: ih.lastCheck, FailingSince: ih.failingSince, CPU: ih.cpu, Memory: ih.memory,
			Restarts: cs.RestartCount, InRotation: cs.Addr != "" && slices.Contains(rotation, cs.Addr),
		})
	}
	appStatus, appCauses := health.Evaluate(in, a.cfg.Rules)
	if appStatus == health.NoData || appStatus == health.Pending {
		r.Status, r.Causes = appStatus, appCauses
	} else {
		r.Status, r.Causes = health.Worst(appStatus, status), append(appCauses, causes...)
	}
	a.metrics.Status(app.Name, r.Status)
	return r
}

// tellsMore tells whether check c is worth showing rather than cur: a
// failing check before a passing one, else the later.
func tellsMore(c, cur health.Result) bool {
	if (c.Err != "") != (cur.Err != "") {
		return c.Err != ""
	}
	return c.At.After(cur.At)
}

// instanceHealth returns what the monitor knows of each of app's
// instances, by container ID.
func (a *Agent) instanceHealth(app string) map[string]instanceHealth {
	h := a.appHealth(app)
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]instanceHealth, len(h.instances))
	for id, ih := range h.instances {
		out[id] = *ih
	}
	return out
}

// probeFor returns the probe of a container: the HTTP path when set, the
// image's HEALTHCHECK when it has one, else a TCP connect, with words for
// what it checks.
func (a *Agent) probeFor(s health.Settings, hasHealthcheck bool, id, addr string, port int) (health.Prober, string) {
	switch {
	case s.Path != "":
		return health.NewHTTP(addr, s.Path), "GET " + s.Path + " answers 2xx/3xx"
	case hasHealthcheck:
		return health.Func(func(ctx context.Context) error {
			st, err := a.rt.State(ctx, id)
			if err != nil {
				return err
			}
			if st.Health != "healthy" {
				return fmt.Errorf("the image's HEALTHCHECK says %s", st.Health)
			}
			return nil
		}), "the image's HEALTHCHECK passes"
	}
	return health.TCP{Addr: addr}, fmt.Sprintf("port %d accepts connections", port)
}
