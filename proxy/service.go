package proxy

import (
	"context"
	"log"
	"log/slog"
	"sync/atomic"
	"time"
)

// Service routes one app's public port(s) to its current set of targets.
// The set is swapped as one pointer; the request path takes no lock.
type Service struct {
	app      string
	opts     Options
	log      *slog.Logger
	errorLog *log.Logger

	obs AppObserver

	targets atomic.Pointer[[]*Target]
	next    atomic.Uint64
	// swapped is closed, and replaced, at every swap: requests waiting
	// for a first version wake on it.
	swapped atomic.Pointer[chan struct{}]
	// waiting counts the requests waiting for a first version.
	waiting atomic.Int64
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

// install routes the service to next and wakes the requests waiting for
// a version.
func (s *Service) install(next []*Target) {
	s.targets.Store(&next)
	ch := make(chan struct{})
	close(*s.swapped.Swap(&ch))
}

// pick returns a target that is not draining, counted as in flight. When
// the app has none, it waits up to opts.StartWait for a swap to install
// one (a first deploy finishing), and returns nil if none comes or ctx
// ends.
func (s *Service) pick(ctx context.Context) *Target {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		swapped := s.swapped.Load() // before the set: a swap after this wakes us
		if set := s.targets.Load(); set != nil && len(*set) > 0 {
			ts := *set
			t := ts[0]
			if len(ts) > 1 {
				t = ts[s.next.Add(1)%uint64(len(ts))]
			}
			if t.acquire() {
				return t
			}
			// t began draining after we loaded the set: a newer set is
			// already installed, so load again.
			continue
		}
		if s.opts.StartWait <= 0 {
			return nil
		}
		if timer == nil {
			timer = time.NewTimer(s.opts.StartWait)
			s.waiting.Add(1)
			defer s.waiting.Add(-1)
		}
		select {
		case <-*swapped:
		case <-timer.C:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}
