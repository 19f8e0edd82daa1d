package loadgen_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/loadgen"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// TestLoadIsWatchedWhileItRuns changes what the backend answers while a
// load runs, and reads the answers so far before stopping it.
func TestLoadIsWatchedWhileItRuns(t *testing.T) {
	var version atomic.Value
	version.Store("v1")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if version.Load() == "down" {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "%s %s", version.Load(), strings.Repeat("x", 40))
	}))
	defer srv.Close()
	long := func(v string) string { return v + " " + strings.Repeat("x", 40) }

	load := loadgen.Start(loadgen.Options{URL: srv.URL, Workers: 2})
	testenv.Eventually(t, 10*time.Second, func() error {
		if n := load.Answers(long("v1")); n < 10 {
			return fmt.Errorf("%d answers from v1", n)
		}
		return nil
	})
	version.Store("v2")
	testenv.Answered(t, load, long("v2"), 10)
	version.Store("down")
	testenv.Eventually(t, 10*time.Second, func() error {
		if r := load.Now(); r.Failed == 0 {
			return fmt.Errorf("no failure yet: %s", r)
		}
		return nil
	})
	r := load.Stop()
	if r.OK < 20 || r.Failed == 0 || r.Errors["status 503: down\n"] != r.Failed || r.Elapsed <= 0 {
		t.Errorf("result = %+v", r)
	}
	// Answers compares bodies as Result keys them, on 32 bytes.
	if got := r.Bodies[long("v2")[:32]]; got != load.Answers(long("v2")) || got < 10 {
		t.Errorf("v2 answered %d, Answers says %d", got, load.Answers(long("v2")))
	}
	if after := load.Now(); after.OK+after.Failed != r.OK+r.Failed || after.Elapsed != r.Elapsed {
		t.Errorf("the load went on after Stop: %s, then %s", r, after)
	}
}
