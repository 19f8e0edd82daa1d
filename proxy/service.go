package proxy

import (
	"context"
	"log"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Service routes one app's public port(s) to its current set of targets.
// The set is swapped as one pointer; the request path takes no lock.
// Target health is a few atomics on each target.
type Service struct {
	app      string
	opts     Options
	log      *slog.Logger
	errorLog *log.Logger

	obs AppObserver

	routes atomic.Pointer[routes]
	// routing serialises Route calls: each builds on the set before it.
	// The request path never takes it.
	routing sync.Mutex
	// swapped is closed, and replaced, at every swap: requests waiting
	// for a first version wake on it.
	swapped atomic.Pointer[chan struct{}]
	// waiting counts the requests waiting for a first version.
	waiting atomic.Int64
	// removed is set when the app's last port closed: no version will
	// come, and requests still arriving on its open connections get 503
	// at once.
	removed atomic.Bool
}

func newService(app string, opts Options, logger *slog.Logger) *Service {
	s := &Service{app: app, opts: opts, log: logger.With("app", app), obs: nopObserver{}}
	if opts.Observer != nil {
		s.obs = opts.Observer.App(app)
	}
	s.errorLog = slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	ch := make(chan struct{})
	s.swapped.Store(&ch)
	return s
}

// install routes the service to next, wakes the requests waiting for a
// version, and returns the set it replaced.
func (s *Service) install(next *routes) *routes {
	prev := s.routes.Swap(next)
	ch := make(chan struct{})
	close(*s.swapped.Swap(&ch))
	return prev
}

// pick returns a target for a new request (routes.pick says which),
// counted as in flight. When the app has none, it waits up to
// opts.StartWait for a swap to install one (a first deploy finishing), and
// returns a zero picked if none comes or ctx ends.
func (s *Service) pick(ctx context.Context) picked {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		swapped := s.swapped.Load() // before the set: a swap after this wakes us
		if r := s.routes.Load(); r != nil && len(r.all) > 0 {
			if p, ok := r.pick(); ok {
				return p
			}
			// The target began draining after we loaded the set: a
			// newer set is already installed, so load again.
			continue
		}
		if s.opts.StartWait <= 0 || s.removed.Load() {
			return picked{}
		}
		if timer == nil {
			timer = time.NewTimer(s.opts.StartWait)
			s.waiting.Add(1)
			defer s.waiting.Add(-1)
		}
		select {
		case <-*swapped:
		case <-timer.C:
			return picked{}
		case <-ctx.Done():
			return picked{}
		}
	}
}

// pickAnother returns a target for a request that could not be sent to the
// ones in tried: another that takes requests, of the same version when one
// is, counted as in flight; or a zero picked.
func (s *Service) pickAnother(tried []*Target, version string) picked {
	for {
		r := s.routes.Load()
		if r == nil {
			return picked{}
		}
		m, trial, ok := r.anyTaking(tried, version)
		if !ok {
			return picked{}
		}
		if m.t.acquire() {
			return picked{m.t, m.version, trial}
		}
	}
}

// refused takes t out of the rotation after it refused a connection,
// unless no other target of the app takes requests: the last one is never
// ejected (better a 502 than no chance). It logs transitions only.
func (s *Service) refused(p picked, err error) {
	if !p.trial && !s.othersTake(p.t) {
		return
	}
	if ejected, backoff := p.t.eject(p.trial); ejected {
		s.log.LogAttrs(context.Background(), slog.LevelWarn, "target ejected",
			slog.String("target", p.t.addr), slog.String("version", p.version),
			slog.Duration("retry_in", backoff), slog.String("error", err.Error()))
	}
}

// reached notes that t accepted a connection, which ends an ejection.
func (s *Service) reached(p picked) {
	if p.t.reached() {
		s.log.LogAttrs(context.Background(), slog.LevelInfo, "target back in rotation",
			slog.String("target", p.t.addr), slog.String("version", p.version))
	}
}

// othersTake tells whether a target of the app other than t is in the
// rotation.
func (s *Service) othersTake(t *Target) bool {
	r := s.routes.Load()
	if r == nil {
		return false
	}
	for _, m := range r.all {
		if m.t != t && m.t.inRotation() {
			return true
		}
	}
	return false
}
