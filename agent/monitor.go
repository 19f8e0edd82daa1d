package agent

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/store"
)

// The monitor checks each serving container after its deploy, as Elastic
// Beanstalk's enhanced health does: it runs the app's health check, follows
// restarts and resource use, and restarts a container whose check keeps
// failing.

// Monitor defaults.
const (
	DefaultMonitorInterval = 5 * time.Second
	DefaultRestartAfter    = 3
)

// appHealth is what the monitor knows of one app's serving container.
type appHealth struct {
	mu           sync.Mutex
	containerID  string
	checksRun    bool
	failures     int
	failingSince time.Time
	lastCheck    health.Result
	restarts     []time.Time
	restartCount int    // the engine's count, last seen
	status       string // last status the monitor computed
	usage        usageSample
	cpu          float64 // share of one CPU
	memory       uint64
}

type usageSample struct{ cpu, system uint64 }

func (a *Agent) appHealth(app string) *appHealth {
	a.mu.Lock()
	defer a.mu.Unlock()
	h, ok := a.health[app]
	if !ok {
		h = &appHealth{}
		a.health[app] = h
	}
	return h
}

// Monitor checks the serving containers every cfg.MonitorInterval until
// ctx ends, and records their status.
func (a *Agent) Monitor(ctx context.Context) {
	a.everyServing(ctx, a.cfg.MonitorInterval, "health monitor", a.check)
}

// check runs one round of the monitor on app, then records its status.
func (a *Agent) check(ctx context.Context, app *store.App) {
	a.probeServing(ctx, app)
	a.noteStatus(ctx, app)
}

// probeServing checks the serving container: its restarts, its resource
// use and its health check, restarting it after repeated failures.
func (a *Agent) probeServing(ctx context.Context, app *store.App) {
	h := a.appHealth(app.Name)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.containerID != app.ContainerID {
		// A new container: forget the old one's history but its restarts.
		h.containerID, h.checksRun, h.failures, h.failingSince = app.ContainerID, false, 0, time.Time{}
		h.lastCheck, h.restartCount, h.usage, h.cpu, h.memory = health.Result{}, 0, usageSample{}, 0, 0
	}
	now := time.Now()
	st, err := a.rt.State(ctx, app.ContainerID)
	if err != nil {
		return
	}
	if st.RestartCount > h.restartCount {
		for range st.RestartCount - h.restartCount {
			h.restarts = append(h.restarts, now)
		}
		a.event(app.Name, app.Serving, "restart", "the engine restarted the container of %s (exit code %d)", app.Serving, st.ExitCode)
	}
	h.restartCount = st.RestartCount

	if u, err := a.rt.Usage(ctx, app.ContainerID); err == nil {
		if h.usage.system > 0 && u.System > h.usage.system && u.CPU >= h.usage.cpu {
			h.cpu = float64(u.CPU-h.usage.cpu) / float64(u.System-h.usage.system) * float64(max(u.CPUs, 1))
		}
		h.usage, h.memory = usageSample{u.CPU, u.System}, u.Memory
		a.metrics.Usage(app.Name, h.cpu, h.memory, st.RestartCount)
	}
	if !st.Running || st.Addr == "" {
		return
	}
	v, _ := a.store.Version(app.Name, app.Serving)
	hasHC := v != nil && v.HasHealthcheck
	s := a.HealthSettings(app)
	probe, _ := a.probeFor(s, hasHC, app.ContainerID, st.Addr, 0)
	pctx, cancel := context.WithTimeout(ctx, s.Timeout)
	t0 := time.Now()
	perr := probe.Probe(pctx)
	cancel()
	h.checksRun = true
	h.lastCheck = health.Result{At: t0, Took: time.Since(t0)}
	a.metrics.Check(app.Name, perr == nil, h.lastCheck.Took)
	if perr == nil {
		if !h.failingSince.IsZero() {
			a.event(app.Name, app.Serving, "health", "health check of %s passes again", app.Serving)
		}
		h.failures, h.failingSince = 0, time.Time{}
		return
	}
	h.lastCheck.Err = perr.Error()
	h.failures++
	if h.failingSince.IsZero() {
		h.failingSince = t0
		a.event(app.Name, app.Serving, "health", "health check of %s failing: %v", app.Serving, perr)
	}
	if a.cfg.RestartAfter > 0 && h.failures >= a.cfg.RestartAfter {
		a.event(app.Name, app.Serving, "restart", "restarting the container of %s after %d failed health checks (last: %v)", app.Serving, h.failures, perr)
		if err := a.rt.Restart(ctx, app.ContainerID, a.cfg.StopGrace); err != nil {
			a.log.Error("restart unhealthy container", "app", app.Name, "error", err)
			return
		}
		h.restarts = append(h.restarts, time.Now())
		h.failures = 0
		h.restartCount = -1 // the engine counts its own restarts only; resync next round
	}
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
	App       string        `json:"app"`
	Serving   string        `json:"serving,omitempty"`
	Status    string        `json:"status"`
	Causes    []string      `json:"causes,omitempty"`
	Stats     health.Stats  `json:"stats"`
	RateRPS   float64       `json:"rate_rps"`
	Uptime    time.Duration `json:"uptime"`
	Restarts  int           `json:"restarts"`
	CPU       float64       `json:"cpu"`
	Memory    uint64        `json:"memory_bytes"`
	LastCheck health.Result `json:"last_check"`
}

// Health computes an app's status from its requests, its checks and its
// container, by the configured rules.
func (a *Agent) Health(ctx context.Context, app *store.App) Report {
	cs := a.ContainerStatus(ctx, app)
	deploying := a.deploying(app.Name)
	h := a.appHealth(app.Name)
	h.mu.Lock()
	in := health.Input{
		Serving: app.Serving != "", Deploying: deploying, Container: cs.State,
		CheckFailingSince: h.failingSince, ChecksRun: h.checksRun,
		Stats: a.tracker.Window(app.Name).Stats(a.cfg.Rules.Window), Now: time.Now(),
	}
	for _, t := range h.restarts {
		if time.Since(t) <= a.cfg.Rules.RestartWindow {
			in.Restarts++
		}
	}
	r := Report{App: app.Name, Serving: app.Serving, Stats: in.Stats, RateRPS: in.Stats.Rate(), Restarts: cs.RestartCount, CPU: h.cpu, Memory: h.memory, LastCheck: h.lastCheck}
	h.mu.Unlock()
	if in.Container == "none" && app.Serving != "" {
		in.Container = "missing"
	}
	r.Status, r.Causes = health.Evaluate(in, a.cfg.Rules)
	if !cs.StartedAt.IsZero() && cs.State == "running" {
		r.Uptime = time.Since(cs.StartedAt).Round(time.Second)
	}
	a.metrics.Status(app.Name, r.Status)
	return r
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
