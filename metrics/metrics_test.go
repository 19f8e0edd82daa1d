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
