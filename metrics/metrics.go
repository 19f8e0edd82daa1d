// Package metrics owns the agent's Prometheus registry and the metrics
// that the proxy and the deploy engine report into it. Label values are
// bounded: apps, the versions each app serves (ForgetVersion drops a
// retired one), methods from a fixed list, status classes, step names.
package metrics

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/internal/readmostly"
	"github.com/sprout-paas/sprout/proxy"
)

// Metrics is the agent's registry and its collectors.
type Metrics struct {
	reg *prometheus.Registry

	mu sync.Mutex
	// apps holds each app's latest proxy observer, whose per-version
	// series ForgetVersion must drop.
	apps map[string]*appObserver

	requests       *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	inFlight       *prometheus.GaugeVec
	bytes          *prometheus.CounterVec
	upstreamErrors *prometheus.CounterVec

	deploys     *prometheus.CounterVec
	fetches     *prometheus.CounterVec
	steps       *prometheus.HistogramVec
	serving     *prometheus.GaugeVec
	lastSuccess *prometheus.GaugeVec

	status   *prometheus.GaugeVec
	checks   *prometheus.CounterVec
	checkDur *prometheus.HistogramVec
	cpu      *prometheus.GaugeVec
	memory   *prometheus.GaugeVec
	restarts *prometheus.GaugeVec
}

// New returns metrics on a fresh registry with the Go and process
// collectors. storeSize, when not nil, reports the state file's size.
func New(storeSize func() float64) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), apps: map[string]*appObserver{}}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }

	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sprout_proxy_requests_total", Help: "Requests the proxy answered, by app, version served, method and status class.",
	}, []string{"app", "version", "method", "code"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "sprout_proxy_request_duration_seconds", Help: "Time from a request's head to the end of its response, by app and version served.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"app", "version"})
	m.inFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sprout_proxy_requests_in_flight", Help: "Requests being proxied now.",
	}, []string{"app"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sprout_proxy_response_bytes_total", Help: "Response body bytes sent to clients.",
	}, []string{"app"})
	m.upstreamErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sprout_proxy_upstream_errors_total", Help: "Requests the app could not answer, by version (empty for no_target) and kind (unreachable, timeout, retired, no_target).",
	}, []string{"app", "version", "kind"})
	m.deploys = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sprout_deploys_total", Help: "Finished deploys, rollbacks and environment rollouts, by result.",
	}, []string{"app", "op", "result"})
	m.fetches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sprout_source_fetches_total", Help: "Fetches of bundles (s3, git) and manifest polls (manifest), by result (ok, unchanged, not_found, denied, too_large, invalid, error).",
	}, []string{"app", "kind", "result"})
	m.steps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "sprout_deploy_step_duration_seconds", Help: "Duration of each deploy step.",
		Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
	}, []string{"app", "step"})
	m.serving = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sprout_app_serving_info", Help: "1 for the version label each app serves.",
	}, []string{"app", "label"})
	m.lastSuccess = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sprout_deploy_last_success_timestamp_seconds", Help: "When each app last started serving a version.",
	}, []string{"app"})
	m.status = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sprout_app_health_status", Help: "1 for each app's enhanced-health status (Ok, Warning, Degraded, Severe, ...), 0 for the others.",
	}, []string{"app", "status"})
	m.checks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sprout_health_checks_total", Help: "Health checks of serving containers, by result (pass, fail).",
	}, []string{"app", "result"})
	m.checkDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "sprout_health_check_duration_seconds", Help: "Latency of health checks of serving containers.",
		Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 2.5, 5},
	}, []string{"app"})
	m.cpu = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sprout_container_cpu_ratio", Help: "CPU used by the serving container, in CPUs (1 = one full CPU).",
	}, []string{"app"})
	m.memory = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sprout_container_memory_bytes", Help: "Memory used by the serving container, as docker stats shows it.",
	}, []string{"app"})
	m.restarts = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sprout_container_restarts", Help: "Times the engine restarted the serving container.",
	}, []string{"app"})
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.inFlight, m.bytes, m.upstreamErrors, m.deploys, m.fetches, m.steps, m.serving, m.lastSuccess,
		m.status, m.checks, m.checkDur, m.cpu, m.memory, m.restarts} {
		f(c)
	}
	if storeSize != nil {
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sprout_store_size_bytes", Help: "Size of the agent's state file."}, storeSize))
	}
	return m
}

// Handler serves the registry in Prometheus's format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry is the registry, for tests and extra collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// methods are the method label values; anything else is "OTHER".
var methods = [...]string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}

var classes = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// appObserver has the app's series resolved once, and each version's on
// its first request, so that a request costs a map look-up and a few
// atomic adds.
type appObserver struct {
	m        *Metrics
	app      string
	inFlight prometheus.Gauge
	bytes    prometheus.Counter
	versions readmostly.Map[*versionSeries]
}

// versionSeries are one version's request series.
type versionSeries struct {
	requests [len(methods)][len(classes)]prometheus.Counter
	duration prometheus.Observer
}

// App implements proxy.Observer.
func (m *Metrics) App(app string) proxy.AppObserver {
	o := &appObserver{
		m:        m,
		app:      app,
		inFlight: m.inFlight.WithLabelValues(app),
		bytes:    m.bytes.WithLabelValues(app),
	}
	m.mu.Lock()
	m.apps[app] = o
	m.mu.Unlock()
	return o
}

// series returns version's series, resolving them on its first request.
func (o *appObserver) series(version string) *versionSeries {
	return o.versions.Get(version, func() *versionSeries {
		vs := &versionSeries{duration: o.m.duration.WithLabelValues(o.app, version)}
		for i, method := range methods {
			for j, class := range classes {
				vs.requests[i][j] = o.m.requests.WithLabelValues(o.app, version, method, class)
			}
		}
		return vs
	})
}

func methodIndex(m string) int {
	for i, x := range methods[:len(methods)-1] {
		if x == m {
			return i
		}
	}
	return len(methods) - 1
}

func (o *appObserver) Start() { o.inFlight.Inc() }

func (o *appObserver) Done(version, method string, status int, took time.Duration, bytes int64) {
	o.inFlight.Dec()
	class := status/100 - 1
	if class < 0 || class >= len(classes) {
		class = len(classes) - 1 // no status at all: count it as a server error
	}
	vs := o.series(version)
	vs.requests[methodIndex(method)][class].Inc()
	vs.duration.Observe(took.Seconds())
	o.bytes.Add(float64(bytes))
}

func (o *appObserver) UpstreamError(version, kind string) {
	o.m.upstreamErrors.WithLabelValues(o.app, version, kind).Inc()
}

// DeployDone counts a finished deploy (op: deploy, rollback, setenv,
// recover) with its result (success or failed).
func (m *Metrics) DeployDone(app, op, result string) {
	m.deploys.WithLabelValues(app, op, result).Inc()
}

// Fetch counts a fetch of a remote bundle or a poll of a manifest.
func (m *Metrics) Fetch(app, kind, result string) {
	m.fetches.WithLabelValues(app, kind, result).Inc()
}

// Step records how long a deploy step took.
func (m *Metrics) Step(app, step string, d time.Duration) {
	m.steps.WithLabelValues(app, step).Observe(d.Seconds())
}

// Serving records that app now serves label.
func (m *Metrics) Serving(app, label string) {
	m.serving.DeletePartialMatch(prometheus.Labels{"app": app})
	m.serving.WithLabelValues(app, label).Set(1)
	m.lastSuccess.WithLabelValues(app).Set(float64(time.Now().Unix()))
}

// Forget deletes every series of app, of all its versions, as when it is
// removed.
func (m *Metrics) Forget(app string) {
	m.mu.Lock()
	delete(m.apps, app)
	m.mu.Unlock()
	match := prometheus.Labels{"app": app}
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{m.requests, m.duration, m.inFlight, m.bytes, m.upstreamErrors, m.deploys, m.fetches, m.steps, m.serving, m.lastSuccess,
		m.status, m.checks, m.checkDur, m.cpu, m.memory, m.restarts} {
		v.DeletePartialMatch(match)
	}
}

// ForgetVersion deletes the series of one version of app, as when the
// version is retired: the version label stays bounded by the versions an
// app serves. A request of that version still in flight may be counted on
// new series, or not at all.
func (m *Metrics) ForgetVersion(app, version string) {
	match := prometheus.Labels{"app": app, "version": version}
	m.requests.DeletePartialMatch(match)
	m.duration.DeletePartialMatch(match)
	m.upstreamErrors.DeletePartialMatch(match)
	// Then the observer's copies, in this order: a request resolving
	// them meanwhile gets the deleted ones (its count is lost) or new
	// ones (kept), never deleted ones kept for good.
	m.mu.Lock()
	o := m.apps[app]
	m.mu.Unlock()
	if o != nil {
		o.versions.Delete(version)
	}
}

// Check counts a health check of a serving container.
func (m *Metrics) Check(app string, ok bool, took time.Duration) {
	result := "fail"
	if ok {
		result = "pass"
	}
	m.checks.WithLabelValues(app, result).Inc()
	m.checkDur.WithLabelValues(app).Observe(took.Seconds())
}

// Usage records a serving container's resource use.
func (m *Metrics) Usage(app string, cpu float64, memory uint64, restarts int) {
	m.cpu.WithLabelValues(app).Set(cpu)
	m.memory.WithLabelValues(app).Set(float64(memory))
	m.restarts.WithLabelValues(app).Set(float64(restarts))
}

// Status records an app's health status: 1 for it, 0 for the others.
func (m *Metrics) Status(app, status string) {
	for _, s := range health.AllStatuses {
		v := 0.0
		if s == status {
			v = 1
		}
		m.status.WithLabelValues(app, s).Set(v)
	}
}

var _ proxy.Observer = (*Metrics)(nil)
