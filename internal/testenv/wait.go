package testenv

import (
	"fmt"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/loadgen"
)

// pollEvery is how often Eventually asks again.
const pollEvery = 100 * time.Millisecond

// Eventually waits until cond returns nil, asking again every 100 ms, and
// fails the test with cond's last error if that takes longer than within.
// A test waits for what it means this way, never for a time.
func Eventually(t testing.TB, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still not so after %s: %v", within, err)
		}
		time.Sleep(pollEvery)
	}
}

// Load sends requests to the app on port (on loopback) from workers
// goroutines until the test ends or Stop is called; see loadgen.
func Load(t testing.TB, port, workers int) *loadgen.Load {
	l := loadgen.Start(loadgen.Options{URL: fmt.Sprintf("http://127.0.0.1:%d/", port), Workers: workers})
	t.Cleanup(func() { l.Stop() })
	return l
}

// Answered waits until load has had n more answers with body than it had
// when called, so that the load is seen to carry on after a change (a
// swap, a rollback, a drained container removed). It fails the test after
// a minute.
func Answered(t testing.TB, load *loadgen.Load, body string, n int64) {
	t.Helper()
	want := load.Answers(body) + n
	Eventually(t, time.Minute, func() error {
		if got := load.Answers(body); got < want {
			return fmt.Errorf("the load had %d answers %q, want %d; so far: %s", got, body, want, load.Now())
		}
		return nil
	})
}
