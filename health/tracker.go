package health

import (
	"sync"
	"time"

	"github.com/sprout-paas/sprout/internal/readmostly"
	"github.com/sprout-paas/sprout/proxy"
)

// Tracker keeps request windows per app, and per version of each app,
// fed by the proxy.
type Tracker struct {
	mu   sync.Mutex
	apps map[string]*appWindows
}

// appWindows are one app's windows: all its requests, and each version's.
type appWindows struct {
	all      *Window
	versions readmostly.Map[*Window]
}

// NewTracker returns a tracker with no apps.
func NewTracker() *Tracker { return &Tracker{apps: map[string]*appWindows{}} }

// app returns app's windows, creating them.
func (t *Tracker) app(app string) *appWindows {
	t.mu.Lock()
	defer t.mu.Unlock()
	a, ok := t.apps[app]
	if !ok {
		a = &appWindows{all: NewWindow()}
		t.apps[app] = a
	}
	return a
}

// Window returns the window of all of app's requests, creating it.
func (t *Tracker) Window(app string) *Window { return t.app(app).all }

// VersionWindow returns the window of the requests that app's version
// served, creating it. It is fed by the same requests as Window.
func (t *Tracker) VersionWindow(app, version string) *Window {
	return t.app(app).version(version)
}

// version returns a's window of version, creating it.
func (a *appWindows) version(version string) *Window { return a.versions.Get(version, NewWindow) }

// Forget drops all of app's windows: a removed app's requests say nothing
// of a new app of the same name.
func (t *Tracker) Forget(app string) {
	t.mu.Lock()
	delete(t.apps, app)
	t.mu.Unlock()
}

// ForgetVersion drops the window of app's version, as when the version is
// retired: a later deploy of the same label starts afresh.
func (t *Tracker) ForgetVersion(app, version string) {
	t.mu.Lock()
	a := t.apps[app]
	t.mu.Unlock()
	if a != nil {
		a.versions.Delete(version)
	}
}

// App implements proxy.Observer.
func (t *Tracker) App(app string) proxy.AppObserver { return windowObserver{t.app(app)} }

type windowObserver struct{ a *appWindows }

func (windowObserver) Start()                       {}
func (windowObserver) UpstreamError(string, string) {}
func (o windowObserver) Done(version, _ string, status int, took time.Duration, _ int64) {
	o.a.all.Record(status, took)
	o.a.version(version).Record(status, took)
}

var _ proxy.Observer = (*Tracker)(nil)
