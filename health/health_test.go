package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func fast(s Settings) Settings {
	s.Interval = 5 * time.Millisecond
	s.Timeout = 200 * time.Millisecond
	if s.Deadline == 0 {
		s.Deadline = 2 * time.Second
	}
	return s
}

func TestWaitNeedsConsecutivePasses(t *testing.T) {
	var n atomic.Int32
	// pass, fail, pass, pass, pass: healthy at the 5th probe with threshold 3.
	pattern := []bool{true, false, true, true, true}
	p := Func(func(context.Context) error {
		i := int(n.Add(1)) - 1
		if i < len(pattern) && !pattern[i] {
			return errors.New("nope")
		}
		return nil
	})
	var seen []Result
	err := Wait(context.Background(), p, fast(Settings{HealthyThreshold: 3}), nil, func(r Result) { seen = append(seen, r) })
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 5 || seen[1].OK() {
		t.Errorf("saw %d probes: %v", len(seen), seen)
	}
}

func TestWaitDeadlineCarriesLastResults(t *testing.T) {
	p := Func(func(context.Context) error { return errors.New("connection refused") })
	err := Wait(context.Background(), p, fast(Settings{Deadline: 100 * time.Millisecond}), nil, nil)
	var we *WaitError
	if !errors.As(err, &we) || !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("err = %v", err)
	}
	if len(we.Last) == 0 || len(we.Last) > keepLast || !strings.Contains(we.Last[0].Err, "refused") {
		t.Errorf("last = %v", we.Last)
	}
}

func TestWaitStopsWhenContainerDies(t *testing.T) {
	p := Func(func(context.Context) error { return errors.New("refused") })
	start := time.Now()
	err := Wait(context.Background(), p, fast(Settings{Deadline: time.Minute}), func(context.Context) error {
		return errors.New("container exited with code 3")
	}, nil)
	if err == nil || !strings.Contains(err.Error(), "exited with code 3") {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("took %s to notice a dead container", time.Since(start))
	}
}

func TestWaitGraceDelaysFirstProbe(t *testing.T) {
	var first time.Time
	start := time.Now()
	p := Func(func(context.Context) error {
		if first.IsZero() {
			first = time.Now()
		}
		return nil
	})
	if err := Wait(context.Background(), p, fast(Settings{Grace: 80 * time.Millisecond}), nil, nil); err != nil {
		t.Fatal(err)
	}
	if first.Sub(start) < 80*time.Millisecond {
		t.Errorf("first probe after %s, before the grace period", first.Sub(start))
	}
}

func TestProbes(t *testing.T) {
	var status atomic.Int32
	status.Store(503)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			w.WriteHeader(404)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	p := NewHTTP(addr, "/healthz")
	if err := p.Probe(context.Background()); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("503: err = %v", err)
	}
	status.Store(302)
	if err := p.Probe(context.Background()); err != nil {
		t.Errorf("302 should pass: %v", err)
	}
	if err := (TCP{Addr: addr}).Probe(context.Background()); err != nil {
		t.Errorf("tcp: %v", err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := l.Addr().String()
	l.Close()
	if err := (TCP{Addr: closed}).Probe(context.Background()); err == nil {
		t.Error("tcp probe of a closed port passed")
	}
}

func TestValidate(t *testing.T) {
	for _, s := range []Settings{{Path: "healthz"}, {Interval: -1}, {HealthyThreshold: 1000}, {Grace: time.Minute, Deadline: time.Second}} {
		if s.Validate() == nil {
			t.Errorf("%+v accepted", s)
		}
	}
	if err := (Settings{Path: "/up"}).WithDefaults().Validate(); err != nil {
		t.Error(err)
	}
}

// TestTrackerForget: a new app of a removed app's name starts with empty
// windows, of the app and of its versions.
func TestTrackerForget(t *testing.T) {
	tr := NewTracker()
	tr.App("web").Done("v1", "GET", 500, time.Millisecond, 0)
	if tr.Window("web").Stats(time.Minute).Requests != 1 || tr.VersionWindow("web", "v1").Stats(time.Minute).Requests != 1 {
		t.Fatal("the windows did not record the request")
	}
	tr.Forget("web")
	if n := tr.Window("web").Stats(time.Minute).Requests; n != 0 {
		t.Errorf("after Forget the window holds %d requests", n)
	}
	if n := tr.VersionWindow("web", "v1").Stats(time.Minute).Requests; n != 0 {
		t.Errorf("after Forget v1's window holds %d requests", n)
	}
}

// TestTrackerVersions: each version's window holds the requests it served,
// the app's window all of them, and a retired version's window goes.
func TestTrackerVersions(t *testing.T) {
	tr := NewTracker()
	o := tr.App("web")
	for range 9 {
		o.Done("v1", "GET", 200, time.Millisecond, 0)
	}
	o.Done("v2", "GET", 503, time.Millisecond, 0)
	all, v1, v2 := tr.Window("web").Stats(time.Minute), tr.VersionWindow("web", "v1").Stats(time.Minute), tr.VersionWindow("web", "v2").Stats(time.Minute)
	if all.Requests != 10 || v1.Requests != 9 || v2.Requests != 1 {
		t.Fatalf("requests: app %d, v1 %d, v2 %d; want 10, 9, 1", all.Requests, v1.Requests, v2.Requests)
	}
	if v1.Share(5) != 0 || v2.Share(5) != 1 || all.Share(5) != 0.1 {
		t.Errorf("5xx shares: app %v, v1 %v, v2 %v", all.Share(5), v1.Share(5), v2.Share(5))
	}
	tr.ForgetVersion("web", "v2")
	if n := tr.VersionWindow("web", "v2").Stats(time.Minute).Requests; n != 0 {
		t.Errorf("after ForgetVersion v2's window holds %d requests", n)
	}
	if n := tr.VersionWindow("web", "v1").Stats(time.Minute).Requests; n != 9 {
		t.Errorf("after v2 was forgotten v1's window holds %d requests, want 9", n)
	}
	o.Done("v2", "GET", 200, time.Millisecond, 0)
	if n := tr.VersionWindow("web", "v2").Stats(time.Minute).Requests; n != 1 {
		t.Errorf("a request of v2 after ForgetVersion: the window holds %d, want 1", n)
	}
}
