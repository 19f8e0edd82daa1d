package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
)

// run runs the sprout command line with args and returns its output.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	root := NewRootCommand(&out, &out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// TestScaleAndAbortHelp compares the help of scale and abort with their
// golden files.
func TestScaleAndAbortHelp(t *testing.T) {
	for _, cmd := range []string{"scale", "abort"} {
		out, err := run(t, cmd, "--help")
		if err != nil {
			t.Fatalf("%s --help: %v", cmd, err)
		}
		golden(t, cmd+"-help.golden", []byte(out))
	}
}

// TestScaleAndAbortArguments: both need --app, and scale a count from 1
// to 64; each mistake is refused before the agent is asked.
func TestScaleAndAbortArguments(t *testing.T) {
	t.Setenv("SPROUT_SOCKET", "/nonexistent/sprout.sock")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"scale", "3"}, `required flag(s) "app" not set`},
		{[]string{"abort"}, `required flag(s) "app" not set`},
		{[]string{"scale", "--app", "web"}, "accepts 1 arg(s), received 0"},
		{[]string{"scale", "--app", "web", "0"}, `N is how many instances the app runs, from 1 to 64, not "0"`},
		{[]string{"scale", "--app", "web", "65"}, `from 1 to 64, not "65"`},
		{[]string{"scale", "--app", "web", "four"}, `from 1 to 64, not "four"`},
		{[]string{"abort", "--app", "web", "now"}, `unknown command "now"`},
	} {
		_, err := run(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("sprout %s: %v, want an error with %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

// fakeAgent answers the API on a unix socket with handler, and points
// SPROUT_SOCKET at it.
func fakeAgent(t *testing.T, handler http.HandlerFunc) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	t.Setenv("SPROUT_SOCKET", sock)
}

// TestAbortSaysWhatItDid: abort prints what it stopped, each queued
// operation it cancelled and what serves, and exits 0 when nothing was
// running or queued, saying so. It tells the agent who asks.
func TestAbortSaysWhatItDid(t *testing.T) {
	rollback := agent.Operation{App: "web", Kind: "rollback", Label: "v7", Queued: true, By: "bob@laptop", StartedAt: time.Now()}
	scale := agent.Operation{App: "web", Kind: "scale", Queued: true, StartedAt: time.Now().Add(-3 * time.Minute)}
	for _, tc := range []struct {
		answer api.AbortResult
		want   string
	}{
		{api.AbortResult{Aborted: "deploy", Serving: "v1", Instances: 4}, "aborted the deploy of web: v1 serves on 4 instance(s)\n"},
		{api.AbortResult{Serving: "v1", Instances: 4}, "nothing to abort: no deploy, rollback, setenv or scale of web is running or queued\n"},
		{api.AbortResult{Aborted: "deploy", Cancelled: []agent.Operation{rollback, scale}, Serving: "v1", Instances: 2},
			"aborted the deploy of web: v1 serves on 2 instance(s)\ncancelled the queued rollback to v7 (started by bob@laptop)\ncancelled the queued scale (started 3m ago)\n"},
		{api.AbortResult{Cancelled: []agent.Operation{rollback}, Serving: "v1", Instances: 1},
			"nothing of web was running: v1 serves on 1 instance(s)\ncancelled the queued rollback to v7 (started by bob@laptop)\n"},
	} {
		fakeAgent(t, func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost || r.URL.Path != "/v1/apps/web/abort" {
				http.NotFound(w, r)
				return
			}
			if by := r.Header.Get(api.ByHeader); !strings.Contains(by, "@") {
				t.Errorf("abort says it is asked by %q, want user@host", by)
			}
			json.NewEncoder(w).Encode(tc.answer)
		})
		out, err := run(t, "abort", "--app", "web")
		if err != nil || out != tc.want {
			t.Errorf("abort with %+v: %q, %v; want %q", tc.answer, out, err, tc.want)
		}
	}
}
