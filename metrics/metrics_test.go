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
		o.Done(r.method, r.status, 3*time.Millisecond, 100)
	}
	o.UpstreamError("timeout")
	for want, n := range map[[2]string]float64{{"GET", "2xx"}: 2, {"POST", "5xx"}: 1, {"OTHER", "4xx"}: 1, {"GET", "5xx"}: 1} {
		if got := testutil.ToFloat64(m.requests.WithLabelValues("web", want[0], want[1])); got != n {
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
		o.Done("GET", 200, time.Millisecond, 10)
		o.UpstreamError("no_target")
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
