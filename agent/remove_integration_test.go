package agent_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// TestRemovedAppsPortNeverReachesAnotherApp is the regression test of a
// removed app's routing state outliving it: after `apps rm aa` and a
// deploy of bb (whose container may get the bridge address aa's had), a
// new deploy of aa answered with bb's responses until its swap.
func TestRemovedAppsPortNeverReachesAnotherApp(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	aa, bb := testenv.Name("aa"), testenv.Name("bb")
	pa, pb := testenv.FreePort(t), testenv.FreePort(t)
	bundleA := testenv.Bundle(t, "", "ENV GREETING="+aa)
	h.mustDeploy(aa, "v1", bundleA, portParam(pa))
	if _, err := h.client.RemoveApp(context.Background(), aa, false, nil); err != nil {
		t.Fatal(err)
	}
	h.mustDeploy(bb, "v1", testenv.Bundle(t, "", "ENV GREETING="+bb), portParam(pb))

	// aa again, slow to become healthy: its port opens at once, and
	// requests to it must wait for aa's new version, never reach bb.
	var mu sync.Mutex
	var answers []string
	var wg sync.WaitGroup
	asked := false
	slowA := testenv.Bundle(t, "", "ENV GREETING="+aa, "ENV APP_BOOT_DELAY=1500ms")
	_, lines, err := h.deployWatching(aa, "v2", slowA, portParam(pa), func(m api.Message) {
		if m.Step != "health" || asked {
			return
		}
		asked = true
		for range 3 {
			wg.Go(func() {
				a := ask(fmt.Sprintf("http://127.0.0.1:%d/", pa))
				mu.Lock()
				answers = append(answers, a)
				mu.Unlock()
			})
		}
	})
	if err != nil {
		t.Fatalf("deploy of %s v2: %v\n%s", aa, err, strings.Join(lines, "\n"))
	}
	wg.Wait()
	if !asked {
		t.Fatalf("the deploy never reported its health step:\n%s", strings.Join(lines, "\n"))
	}
	for _, a := range answers {
		if a != "200 v2 "+aa {
			t.Errorf("a request to %s's port during its deploy got %q, want %q", aa, a, "200 v2 "+aa)
		}
	}
	// Its health counts the three requests as its own successes, and
	// nothing of the removed app of the same name.
	var last agent.Report
	testenv.Eventually(t, 5*time.Second, func() error {
		reports, err := h.client.Health(context.Background(), aa)
		if err != nil || len(reports) != 1 {
			t.Fatalf("health: %v %v", reports, err)
		}
		if last = reports[0]; last.Stats.Requests != int64(len(answers)) {
			return fmt.Errorf("%d requests counted, want %d", last.Stats.Requests, len(answers))
		}
		return nil
	})
	if last.Stats.Requests != int64(len(answers)) || last.Stats.Classes[4] != 0 || last.Status == "Severe" {
		t.Errorf("health of %s after its first deploy = %s %+v %v, want %d requests and no 5xx", aa, last.Status, last.Stats, last.Causes, len(answers))
	}
}

// ask returns "status body" of a GET, or the error.
func ask(url string) string {
	resp, err := http.Get(url)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, b)
}
