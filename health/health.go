// Package health decides when a newly started app is ready to take
// traffic: it runs a probe (TCP connect, HTTP GET, or the image's own
// HEALTHCHECK) until it passes the required number of consecutive times,
// gives up at a deadline, and stops at once when the container dies.
package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Settings tune the health wait of one app.
type Settings struct {
	// Path, when set, makes the probe an HTTP GET of this path that must
	// answer 2xx or 3xx; otherwise a TCP connect to the app's port.
	Path string `json:"path,omitempty"`
	// Interval is the time between two probes.
	Interval time.Duration `json:"interval"`
	// Timeout bounds one probe.
	Timeout time.Duration `json:"timeout"`
	// HealthyThreshold is how many consecutive passes make the app healthy.
	HealthyThreshold int `json:"healthy_threshold"`
	// Grace is how long after start the first probe waits, for apps that
	// need time to boot.
	Grace time.Duration `json:"grace"`
	// Deadline bounds the whole wait, grace included.
	Deadline time.Duration `json:"deadline"`
}

// Defaults: probe often so that a healthy app takes traffic quickly, and
// wait long enough for slow boots.
const (
	DefaultInterval         = 500 * time.Millisecond
	DefaultTimeout          = 2 * time.Second
	DefaultHealthyThreshold = 2
	DefaultDeadline         = 5 * time.Minute
)

// WithDefaults fills zero fields.
func (s Settings) WithDefaults() Settings {
	if s.Interval <= 0 {
		s.Interval = DefaultInterval
	}
	if s.Timeout <= 0 {
		s.Timeout = DefaultTimeout
	}
	if s.HealthyThreshold <= 0 {
		s.HealthyThreshold = DefaultHealthyThreshold
	}
	if s.Deadline <= 0 {
		s.Deadline = DefaultDeadline
	}
	return s
}

// Or fills the zero fields of s from defaults, then from the package's
// defaults.
func (s Settings) Or(defaults Settings) Settings {
	if s.Path == "" {
		s.Path = defaults.Path
	}
	if s.Interval <= 0 {
		s.Interval = defaults.Interval
	}
	if s.Timeout <= 0 {
		s.Timeout = defaults.Timeout
	}
	if s.HealthyThreshold <= 0 {
		s.HealthyThreshold = defaults.HealthyThreshold
	}
	if s.Grace <= 0 {
		s.Grace = defaults.Grace
	}
	if s.Deadline <= 0 {
		s.Deadline = defaults.Deadline
	}
	return s.WithDefaults()
}

// Validate reports a setting that cannot work.
func (s Settings) Validate() error {
	switch {
	case s.Path != "" && !strings.HasPrefix(s.Path, "/"):
		return fmt.Errorf("health path %q must start with /", s.Path)
	case s.Interval < 0 || s.Timeout < 0 || s.Grace < 0 || s.Deadline < 0:
		return errors.New("health durations must not be negative")
	case s.HealthyThreshold < 0 || s.HealthyThreshold > 100:
		return fmt.Errorf("healthy threshold %d must be between 1 and 100", s.HealthyThreshold)
	case s.Deadline > 0 && s.Grace >= s.Deadline:
		return fmt.Errorf("health grace %s must be shorter than the deadline %s", s.Grace, s.Deadline)
	}
	return nil
}

// Prober runs one health probe.
type Prober interface {
	Probe(ctx context.Context) error
}

// TCP passes when a connection to Addr opens.
type TCP struct{ Addr string }

// Probe dials once.
func (p TCP) Probe(ctx context.Context) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", p.Addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// HTTP passes when GET URL answers 2xx or 3xx.
type HTTP struct {
	URL    string
	Client *http.Client
}

// NewHTTP returns a probe of path on addr that does not follow redirects
// and keeps no connection between probes.
func NewHTTP(addr, path string) HTTP {
	return HTTP{
		URL: "http://" + addr + path,
		Client: &http.Client{
			Transport:     &http.Transport{DisableKeepAlives: true, Proxy: nil},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// Probe sends one GET.
func (p HTTP) Probe(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "sprout-health/1")
	resp, err := p.Client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("GET %s answered %s", req.URL.Path, resp.Status)
	}
	return nil
}

// Func adapts a function into a Prober, for example one that reads the
// engine's HEALTHCHECK status.
type Func func(ctx context.Context) error

// Probe calls f.
func (f Func) Probe(ctx context.Context) error { return f(ctx) }

// Result is one probe's outcome.
type Result struct {
	At   time.Time     `json:"at"`
	Took time.Duration `json:"took"`
	Err  string        `json:"error,omitempty"`
}

// OK tells whether the probe passed.
func (r Result) OK() bool { return r.Err == "" }

func (r Result) String() string {
	if r.OK() {
		return fmt.Sprintf("%s passed in %s", r.At.Format("15:04:05.000"), r.Took.Round(time.Millisecond))
	}
	return fmt.Sprintf("%s failed after %s: %s", r.At.Format("15:04:05.000"), r.Took.Round(time.Millisecond), r.Err)
}

// ErrUnhealthy is wrapped by every failed wait.
var ErrUnhealthy = errors.New("app did not become healthy")

// WaitError says why a wait failed, with the last probes.
type WaitError struct {
	Reason string
	Last   []Result
	// Deadline is true when the checks were still failing at the
	// deadline, false when the container died.
	Deadline bool
}

func (e *WaitError) Error() string { return e.Reason }

// Unwrap makes a WaitError match ErrUnhealthy.
func (e *WaitError) Unwrap() error { return ErrUnhealthy }

// keepLast is how many probe results a WaitError carries.
const keepLast = 5

// Wait probes until s.HealthyThreshold consecutive passes, the deadline,
// or alive reporting that the container died. observe, when not nil, hears
// each result as it happens.
func Wait(ctx context.Context, p Prober, s Settings, alive func(context.Context) error, observe func(Result)) error {
	s = s.WithDefaults()
	start := time.Now()
	deadline := time.NewTimer(s.Deadline)
	defer deadline.Stop()
	var last []Result
	fail := func(format string, args ...any) error {
		return &WaitError{Reason: fmt.Sprintf(format, args...), Last: last}
	}
	failDeadline := func() error {
		return &WaitError{Reason: fmt.Sprintf("no %d consecutive passing health checks within %s (raise it with --health-deadline)", s.HealthyThreshold, s.Deadline), Last: last, Deadline: true}
	}
	wait := s.Grace
	passes := 0
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-deadline.C:
			return failDeadline()
		case <-time.After(wait):
		}
		wait = s.Interval
		if alive != nil {
			if err := alive(ctx); err != nil {
				return fail("%v", err)
			}
		}
		pctx, cancel := context.WithTimeout(ctx, s.Timeout)
		t0 := time.Now()
		err := p.Probe(pctx)
		cancel()
		r := Result{At: t0, Took: time.Since(t0)}
		if err != nil {
			r.Err = err.Error()
			passes = 0
		} else {
			passes++
		}
		last = append(last, r)
		if len(last) > keepLast {
			last = last[1:]
		}
		if observe != nil {
			observe(r)
		}
		if passes >= s.HealthyThreshold {
			// The container may have died between probe and now; a last
			// look keeps a crash from being swapped in.
			if alive != nil {
				if err := alive(ctx); err != nil {
					return fail("%v", err)
				}
			}
			return nil
		}
		if ctx.Err() == nil && time.Since(start) > s.Deadline {
			return failDeadline()
		}
	}
}
