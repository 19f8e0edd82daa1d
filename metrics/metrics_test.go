package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestSeries(t *testing.T) {
	m := New(func() float64 { return 4096 })
	o := m.App("web")
	for _, r := range []struct {
		method string
		status int
	}{{"GET", 200}, {"GET", 204}, {"POST", 502}, {"BREW", 418}, {"GET", 0}} {
		o.Start()
		o.Done("v1", r.method, r.status, 3*time.Millisecond, 100)
	}
	o.UpstreamError("v1", "timeout")
	for want, n := range map[[2]string]float64{{"GET", "2xx"}: 2, {"POST", "5xx"}: 1, {"OTHER", "4xx"}: 1, {"GET", "5xx"}: 1} {
		if got := testutil.ToFloat64(m.requests.WithLabelValues("web", "v1", want[0], want[1])); got != n {
			t.Errorf("requests %v = %v, want %v", want, got, n)
		}
	}
	if got := testutil.ToFloat64(m.inFlight.WithLabelValues("web")); got != 0 {
		t.Errorf("in flight = %v", got)
	}
	if got := testutil.ToFloat64(m.bytes.WithLabelValues("web")); got != 500 {
		t.Errorf("bytes = %v", got)
	}
	m.DeployDone("web", "deploy", "success")
	m.Step("web", "build", 2*time.Second)
	m.Serving("web", "v1")
	m.Serving("web", "v2")
	if n := testutil.CollectAndCount(m.serving); n != 1 {
		t.Errorf("%d serving series, want only v2's", n)
	}
	if got := testutil.ToFloat64(m.serving.WithLabelValues("web", "v2")); got != 1 {
		t.Errorf("serving v2 = %v", got)
	}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(`
# HELP sprout_store_size_bytes Size of the agent's state file.
# TYPE sprout_store_size_bytes gauge
sprout_store_size_bytes 4096
`), "sprout_store_size_bytes"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(m.Registry()); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// TestForget: a removed app leaves no series behind, not even an empty
// serving label, and another app's series stay.
func TestForget(t *testing.T) {
	m := New(nil)
	for _, app := range []string{"gone", "kept"} {
		o := m.App(app)
		o.Start()
		o.Done("v1", "GET", 200, time.Millisecond, 10)
		o.UpstreamError("", "no_target")
		m.DeployDone(app, "deploy", "success")
		m.Fetch(app, "s3", "ok")
		m.Step(app, "build", time.Second)
		m.Serving(app, "v1")
		m.Check(app, true, time.Millisecond)
		m.Usage(app, 0.5, 1<<20, 0)
		m.Status(app, "Ok")
	}
	m.Forget("gone")
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for _, f := range families {
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() != "app" {
					continue
				}
				if l.GetValue() == "gone" {
					t.Errorf("%s still has a series of the removed app: %v", f.GetName(), s.GetLabel())
				}
				kept++
			}
		}
	}
	if kept < 16 {
		t.Errorf("only %d series of the other app are left", kept)
	}
}

// TestVersions: requests are counted by the version that served them, and
// a retired version's series go while the others stay.
func TestVersions(t *testing.T) {
	m := New(nil)
	o := m.App("web")
	for _, v := range []string{"v1", "v1", "v1", "v2"} {
		o.Start()
		o.Done(v, "GET", 200, time.Millisecond, 10)
	}
	o.UpstreamError("v2", "unreachable")
	if got := testutil.ToFloat64(m.requests.WithLabelValues("web", "v1", "GET", "2xx")); got != 3 {
		t.Errorf("v1's requests = %v, want 3", got)
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues("web", "v2", "GET", "2xx")); got != 1 {
		t.Errorf("v2's requests = %v, want 1", got)
	}
	m.ForgetVersion("web", "v2")
	versions := func() map[string]bool {
		seen := map[string]bool{}
		families, err := m.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			for _, s := range f.GetMetric() {
				for _, l := range s.GetLabel() {
					if l.GetName() == "version" {
						seen[l.GetValue()] = true
					}
				}
			}
		}
		return seen
	}
	if seen := versions(); seen["v2"] || !seen["v1"] {
		t.Errorf("after ForgetVersion(v2) the versions with series are %v, want v1 alone", seen)
	}
	// A request of a version forgotten while it was in flight is
	// counted, on a new series.
	o.Done("v2", "GET", 200, time.Millisecond, 10)
	if got := testutil.ToFloat64(m.requests.WithLabelValues("web", "v2", "GET", "2xx")); got != 1 {
		t.Errorf("v2's requests after ForgetVersion = %v, want 1", got)
	}
}
