package health

import (
	"sync"
	"time"

	"github.com/sprout-paas/sprout/proxy"
)

// Tracker keeps a request window per app, fed by the proxy.
type Tracker struct {
	mu      sync.Mutex
	windows map[string]*Window
}

// NewTracker returns a tracker with no apps.
func NewTracker() *Tracker { return &Tracker{windows: map[string]*Window{}} }

// Window returns app's window, creating it.
func (t *Tracker) Window(app string) *Window {
	t.mu.Lock()
	defer t.mu.Unlock()
	w, ok := t.windows[app]
	if !ok {
		w = NewWindow()
		t.windows[app] = w
	}
	return w
}

// Forget drops app's window: a removed app's requests say nothing of a
// new app of the same name.
func (t *Tracker) Forget(app string) {
	t.mu.Lock()
	delete(t.windows, app)
	t.mu.Unlock()
}

// App implements proxy.Observer.
func (t *Tracker) App(app string) proxy.AppObserver { return windowObserver{t.Window(app)} }

type windowObserver struct{ w *Window }

func (windowObserver) Start()               {}
func (windowObserver) UpstreamError(string) {}
func (o windowObserver) Done(_ string, status int, took time.Duration, _ int64) {
	o.w.Record(status, took)
}

var _ proxy.Observer = (*Tracker)(nil)
