// Package agent is the host daemon's engine: it deploys versions of apps
// (unpack, build, start, wait healthy, swap, drain, retire, record), rolls
// them back, changes their environment with the same swap, and on start
// re-adopts the containers it owns. It reaches the container engine, the
// proxy and the state store through small interfaces of its own.
package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/sprout-paas/sprout/bundle"
	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/proxy"
	"github.com/sprout-paas/sprout/runtime"
	"github.com/sprout-paas/sprout/source"
	"github.com/sprout-paas/sprout/store"
)

// Runtime is what the agent needs from the container engine.
type Runtime interface {
	Build(ctx context.Context, dir, tag string, labels map[string]string, out io.Writer) (string, error)
	EnsureImage(ctx context.Context, ref string, update bool, out io.Writer) error
	Image(ctx context.Context, ref string) (runtime.ImageInfo, error)
	Tag(ctx context.Context, src, dst string) error
	RemoveImage(ctx context.Context, ref string) error
	Run(ctx context.Context, spec runtime.ContainerSpec) (*runtime.Container, error)
	KeepRunning(ctx context.Context, id string) error
	Container(ctx context.Context, id string) (*runtime.Container, error)
	State(ctx context.Context, id string) (runtime.State, error)
	Logs(ctx context.Context, id string, tail int) (string, error)
	Restart(ctx context.Context, id string, grace time.Duration) error
	Usage(ctx context.Context, id string) (runtime.Usage, error)
	LogStream(ctx context.Context, id string, o runtime.LogOptions) (io.ReadCloser, error)
	Stop(ctx context.Context, id string, grace time.Duration) error
	Remove(ctx context.Context, id string) error
	List(ctx context.Context, labels map[string]string) ([]*runtime.Container, error)
	EnsureVolume(ctx context.Context, name string, labels map[string]string) error
	Volumes(ctx context.Context, labels map[string]string) ([]runtime.Volume, error)
	RemoveVolume(ctx context.Context, name string) error
}

// Fetcher gets the bundles the agent pulls itself (from S3 or git) into
// w, at most max bytes.
type Fetcher interface {
	Fetch(ctx context.Context, ref string, w io.Writer, max int64, progress func(string)) (source.Fetched, error)
	// GetIfChanged reads a manifest unless its ETag is still etag.
	GetIfChanged(ctx context.Context, ref, etag string) (body []byte, newETag string, changed bool, err error)
}

// Router is what the agent needs from the proxy.
type Router interface {
	Listen(app string, port int) error
	Close(port int, grace time.Duration)
	// Remove forgets an app: its ports and its targets.
	Remove(app string, grace time.Duration)
	// Route installs app's instances, each with the version it runs.
	Route(app string, backends []proxy.Backend, split map[string]int) (*proxy.Retired, error)
	Targets(app string) []string
	// InRotation lists the targets that take requests: not marked down
	// nor ejected after refusing connections.
	InRotation(app string) []string
	// SetHealthy takes app's instance at addr out of the rotation (ok
	// false) or brings it back (ok true), after the monitor's checks.
	SetHealthy(app, addr string, ok bool)
	// SetDomains serves app on the shared ports by d's names (none: by
	// none), opening or closing those ports (within grace) as needed.
	SetDomains(app string, d proxy.Domains, grace time.Duration) error
}

// Metrics hears how deploys go; the agent's Prometheus metrics implement
// it.
type Metrics interface {
	// DeployDone counts a finished operation (deploy, rollback, setenv,
	// recover) by result (success or failed).
	DeployDone(app, op, result string)
	// Step records how long a deploy step took.
	Step(app, step string, d time.Duration)
	// Fetch counts a fetch of a remote bundle (kind s3 or git) or a poll
	// of a manifest (kind manifest), by result.
	Fetch(app, kind, result string)
	// Serving records the label an app serves.
	Serving(app, label string)
	// Check counts a health check of a serving instance.
	Check(app string, ok bool, took time.Duration)
	// Usage records an app's CPU (share of one CPU), memory and restart
	// count, summed over its instances.
	Usage(app string, cpu float64, memory uint64, restarts int)
	// Status records an app's health status.
	Status(app, status string)
	// Forget drops every series of a removed app, and ForgetVersion
	// those of a version it no longer serves.
	Forget(app string)
	ForgetVersion(app, version string)
}

type nopMetrics struct{}

func (nopMetrics) DeployDone(string, string, string)  {}
func (nopMetrics) Step(string, string, time.Duration) {}
func (nopMetrics) Fetch(string, string, string)       {}
func (nopMetrics) Serving(string, string)             {}
func (nopMetrics) Check(string, bool, time.Duration)  {}
func (nopMetrics) Usage(string, float64, uint64, int) {}
func (nopMetrics) Status(string, string)              {}
func (nopMetrics) Forget(string)                      {}
func (nopMetrics) ForgetVersion(string, string)       {}

var (
	_ Runtime = (*runtime.Docker)(nil)
	_ Router  = (*proxy.Proxy)(nil)
)

// Config is the agent's configuration, filled once by the CLI layer.
type Config struct {
	// DataDir holds the state file, uploads and unpacked bundles.
	DataDir string
	// KeepVersions is how many images of earlier versions are kept for
	// instant rollback, besides the serving one.
	KeepVersions int
	// DrainTimeout bounds how long a retired version's requests may run.
	DrainTimeout time.Duration
	// StreamGrace bounds websockets and event streams during a drain.
	StreamGrace time.Duration
	// StopGrace is the time between SIGTERM and SIGKILL for a container.
	StopGrace time.Duration
	// Bundle limits what one bundle may unpack to.
	Bundle bundle.Limits
	// MaxUploadBytes caps the size of an uploaded bundle archive.
	MaxUploadBytes int64
	// Health holds the defaults of every app's health settings.
	Health health.Settings
	// DefaultPort is an app's public port when its first deploy names none.
	DefaultPort int
	// LogMaxSize and LogMaxFiles bound each container's log.
	LogMaxSize  string
	LogMaxFiles string
	// LogBytesPerApp bounds the logs kept of an app's removed containers.
	LogBytesPerApp int64
	// MonitorInterval is how often serving containers are checked.
	MonitorInterval time.Duration
	// RestartAfter is how many failed checks in a row restart a serving
	// container; 0 never restarts.
	RestartAfter int
	// Rules set the thresholds of the enhanced-health statuses.
	Rules health.Rules
	// HooksOff turns .platform hooks off: bundles' hooks are listed and
	// not run.
	HooksOff bool
	// HookTimeout bounds one hook.
	HookTimeout time.Duration
	// BindAddress is the address public ports listen on ("" for all),
	// the proxy's and, with ProxyServer none, the containers'.
	BindAddress string
	// HostDirs are the host directories (and what is under them) that a
	// bundle's Dockerrun Volumes may mount.
	HostDirs []string
}

// Defaults for Config.
const (
	DefaultKeepVersions   = 3
	DefaultDrainTimeout   = 30 * time.Second
	DefaultStreamGrace    = 5 * time.Second
	DefaultStopGrace      = 10 * time.Second
	DefaultMaxUploadBytes = 512 << 20
	DefaultPort           = 80
	DefaultHookTimeout    = 5 * time.Minute
)

// DefaultHostDirs is where Dockerrun volumes may live on the host, as on
// Elastic Beanstalk.
var DefaultHostDirs = []string{"/var/app"}

func (c Config) withDefaults() Config {
	if c.KeepVersions <= 0 {
		c.KeepVersions = DefaultKeepVersions
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.StreamGrace <= 0 {
		c.StreamGrace = DefaultStreamGrace
	}
	if c.StopGrace <= 0 {
		c.StopGrace = DefaultStopGrace
	}
	if c.MaxUploadBytes <= 0 {
		c.MaxUploadBytes = DefaultMaxUploadBytes
	}
	if c.MonitorInterval <= 0 {
		c.MonitorInterval = DefaultMonitorInterval
	}
	if c.RestartAfter < 0 {
		c.RestartAfter = 0
	}
	if c.Rules == (health.Rules{}) {
		c.Rules = health.DefaultRules
	}
	if c.LogBytesPerApp <= 0 {
		c.LogBytesPerApp = DefaultLogBytesPerApp
	}
	if c.DefaultPort <= 0 {
		c.DefaultPort = DefaultPort
	}
	if c.HookTimeout <= 0 {
		c.HookTimeout = DefaultHookTimeout
	}
	if c.HostDirs == nil {
		c.HostDirs = DefaultHostDirs
	}
	c.Health = c.Health.WithDefaults()
	return c
}

// Errors the API turns into statuses and the CLI into advice.
var (
	// ErrBusy means another deploy of the app is running and the caller
	// asked not to wait.
	ErrBusy = errors.New("another deploy of this app is in progress")
	// ErrInvalid means a request was malformed; the message says how.
	ErrInvalid = errors.New("invalid request")
	// ErrNotFound means the app or version does not exist.
	ErrNotFound = store.ErrNotFound
	// ErrConflict means the request clashes with existing state.
	ErrConflict = errors.New("conflict")
	// ErrUpgrading means the agent is handing over to a new agent
	// process (an upgrade) and starts no operation meanwhile.
	ErrUpgrading = errors.New("the agent is being upgraded")
)

// Progress hears what a long operation is doing, as it happens.
type Progress interface {
	// Step says that a named step begins.
	Step(name string)
	// Line reports one line of output of the current step.
	Line(text string)
}

// Agent deploys and runs the apps of one host.
type Agent struct {
	fetcher Fetcher
	// env is this host's part of its environment (RunEnvironment).
	env       envState
	manifests follower
	cfg       Config
	rt        Runtime
	router    Router
	store     *store.Store
	metrics   Metrics
	tracker   *health.Tracker
	log       *slog.Logger
	id        string

	mu     sync.Mutex
	locks  map[string]chan struct{}
	health map[string]*appHealth
	busy   map[string]int
	// rollouts are the rollouts in flight that abort may stop, by app;
	// ops are those and the ones queued behind them (see InFlight).
	rollouts map[string]*runningRollout
	ops      []*runningRollout
	// certs, when set, gets certificates for the domains served; served
	// are those domains, by app, and managed the set it was last told.
	// certsMu serialises telling it (manageCerts).
	certs   CertManager
	served  map[string][]string
	managed []string
	certsMu sync.Mutex
	// claims serialises the checks that a domain is no other app's with
	// the writes that claim it.
	claims sync.Mutex
	// quiesced is set while an upgrade hands the agent over (Quiesce):
	// no operation starts. quiet is closed then, to wake the operations
	// waiting for an app's lock.
	quiesced bool
	quiet    chan struct{}
}

// New returns an agent. Call Start before serving requests. m may be nil;
// tracker, when not nil, is the proxy's request windows.
func New(cfg Config, rt Runtime, router Router, st *store.Store, m Metrics, tracker *health.Tracker, logger *slog.Logger) (*Agent, error) {
	if m == nil {
		m = nopMetrics{}
	}
	if tracker == nil {
		tracker = health.NewTracker()
	}
	cfg = cfg.withDefaults()
	id, err := st.Meta("agent_id", func() string { return randomID(6) })
	if err != nil {
		return nil, err
	}
	for _, d := range []string{uploadsDir(cfg), bundlesDir(cfg)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	return &Agent{cfg: cfg, rt: rt, router: router, store: st, metrics: m, tracker: tracker, log: logger, id: id,
		locks: map[string]chan struct{}{}, health: map[string]*appHealth{}, busy: map[string]int{},
		rollouts: map[string]*runningRollout{}, served: map[string][]string{}}, nil
}

// SetFetcher gives the agent its remote bundle sources; call it before
// Start. Without one, deploys from S3 or git are refused.
func (a *Agent) SetFetcher(f Fetcher) { a.fetcher = f }

// ID is this agent's identity, written on every container it owns.
func (a *Agent) ID() string { return a.id }

// Config returns the configuration in force, defaults filled.
func (a *Agent) Config() Config { return a.cfg }

func uploadsDir(c Config) string { return filepath.Join(c.DataDir, "uploads") }
func bundlesDir(c Config) string { return filepath.Join(c.DataDir, "bundles") }

// NewUpload returns a file in the data dir to receive an uploaded bundle.
func (a *Agent) NewUpload() (*os.File, error) {
	return os.CreateTemp(uploadsDir(a.cfg), "bundle-*")
}

// MaxUploadBytes is the largest bundle archive the agent accepts.
func (a *Agent) MaxUploadBytes() int64 { return a.cfg.MaxUploadBytes }

func randomID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// lock serialises operations on one app. With noWait, a busy app is
// refused with ErrBusy; otherwise the caller hears that it waits.
func (a *Agent) lock(ctx context.Context, app string, noWait bool, p Progress) (func(), error) {
	return a.lockOr(ctx, app, noWait, p, nil)
}

// lockOr is lock that calls waiting, when not nil, before it waits.
func (a *Agent) lockOr(ctx context.Context, app string, noWait bool, p Progress, waiting func()) (func(), error) {
	unlock, err := a.waitLock(ctx, app, noWait, p, waiting)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	if a.quiesced {
		a.mu.Unlock()
		unlock()
		return nil, errUpgrading
	}
	a.busy[app]++
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		if a.busy[app]--; a.busy[app] <= 0 {
			delete(a.busy, app)
		}
		a.mu.Unlock()
		unlock()
	}, nil
}

// rolloutLock says which rollout asks for its app's lock (see
// lockRollout).
type rolloutLock struct {
	app, kind string // kind: deploy, rollback, setenv or scale
	// label is the version it rolls out, when known before its turn: the
	// label a deploy was given, the target of a rollback.
	label  string
	noWait bool
	// cancelled, when not nil, records the end of a rollout that `sprout
	// abort` cancelled while it was queued (cause wraps ErrCancelled),
	// before Abort returns.
	cancelled func(cause error)
}

// lockRollout is lock for a rollout (deploy, rollback, setenv, scale)
// that `sprout abort` may stop: the context it returns is cancelled with
// ErrAborted by Abort until the rollout stands (see stand). The rollout
// is in InFlight from now on, queued while it waits for the lock; an
// abort meanwhile cancels it with ErrCancelled, and it never starts.
func (a *Agent) lockRollout(ctx context.Context, l rolloutLock, p Progress) (context.Context, func(), error) {
	ctx, cancel := context.WithCancelCause(ctx)
	r := a.register(ctx, l, cancel, p)
	unlock, err := a.lockOr(ctx, l.app, l.noWait, p, r.queued)
	if err == nil {
		err = a.hold(ctx, r)
		if err != nil {
			unlock()
		}
	}
	if err != nil {
		a.unregister(r)
		if errors.Is(err, ErrCancelled) && l.cancelled != nil {
			l.cancelled(err)
		}
		cancel(nil)
		close(r.done)
		return nil, nil, err
	}
	return ctx, func() {
		a.unregister(r)
		cancel(nil)
		close(r.done)
		unlock()
	}, nil
}

// hold makes r the rollout in flight of its app, now that it has the
// app's lock, unless its context ended while it waited (an abort
// cancelled it just as its turn came).
func (a *Agent) hold(ctx context.Context, r *runningRollout) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	a.rollouts[r.info.App] = r
	return nil
}

// Wait returns once no operation runs or waits to (a deploy, rollback,
// setenv or scale, queued or not, a recovery, a removal), or with ctx's
// error. A stopping agent waits here for its operations in flight, and so
// may an upgrade; InFlight says what they are.
func (a *Agent) Wait(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		running := a.pending()
		if running == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d operation(s) still running: %w", running, ctx.Err())
		case <-t.C:
		}
	}
}

// pending counts the operations that hold an app's lock or wait for one.
func (a *Agent) pending() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, busy := range a.busy {
		n += busy
	}
	for _, r := range a.ops {
		if a.rollouts[r.info.App] != r {
			n++ // queued: not counted in busy yet
		}
	}
	return n
}

// deploying tells whether an operation (deploy, rollback, setenv,
// recover) of app is running.
func (a *Agent) deploying(app string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.busy[app] > 0
}

func (a *Agent) waitLock(ctx context.Context, app string, noWait bool, p Progress, waiting func()) (func(), error) {
	a.mu.Lock()
	quiesced, quiet := a.quiesced, a.quietLocked()
	a.mu.Unlock()
	if quiesced {
		return nil, errUpgrading
	}
	if unlock, ok := a.tryLock(app); ok {
		return unlock, nil
	}
	if noWait {
		return nil, fmt.Errorf("%w: %s (wait for it, or drop --no-wait to queue behind it)", ErrBusy, app)
	}
	p.Line(fmt.Sprintf("another deploy of %s is in progress; waiting for it to finish", app))
	if waiting != nil {
		waiting()
	}
	a.mu.Lock()
	ch := a.locks[app]
	a.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-quiet:
		return nil, errUpgrading
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

var (
	appNameRe = regexp.MustCompile(`^[a-z0-9]+([._-][a-z0-9]+)*$`)
	labelRe   = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`) // and at most 128 bytes
)

// ValidateAppName checks an app name: it becomes part of image names.
func ValidateAppName(name string) error {
	if len(name) > 63 || !appNameRe.MatchString(name) {
		return fmt.Errorf("%w: app name %q: use lowercase letters, digits and single . _ - between them, at most 63 characters (set it with --app)", ErrInvalid, name)
	}
	return nil
}

// ValidateLabel checks a version label: it becomes an image tag.
func ValidateLabel(label string) error {
	if len(label) > 128 || !labelRe.MatchString(label) {
		return fmt.Errorf("%w: version label %q: use letters, digits, _ . - (not first), at most 128 characters", ErrInvalid, label)
	}
	return nil
}

// event records one line of an app's history and logs it.
func (a *Agent) event(app, label, kind, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	a.log.Info(msg, "app", app, "label", label, "event", kind)
	if err := a.store.AddEvent(store.Event{Time: time.Now(), App: app, Label: label, Kind: kind, Message: msg}); err != nil {
		a.log.Error("record event", "error", err)
	}
}

// lineWriter turns written bytes into Progress lines.
type lineWriter struct {
	p   Progress
	buf []byte
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for {
		i := strings.IndexAny(string(w.buf), "\r\n")
		if i < 0 {
			break
		}
		if line := strings.TrimRight(string(w.buf[:i]), " "); line != "" {
			w.p.Line(line)
		}
		w.buf = w.buf[i+1:]
	}
	return len(b), nil
}

func (w *lineWriter) Flush() {
	if len(w.buf) > 0 {
		w.p.Line(string(w.buf))
		w.buf = nil
	}
}

// logProgress reports progress to the agent's log, for work nobody watches.
type logProgress struct {
	log  *slog.Logger
	step string
}

func (l *logProgress) Step(name string) { l.step = name }
func (l *logProgress) Line(text string) { l.log.Info(text, "step", l.step) }
