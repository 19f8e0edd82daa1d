package cli

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// streamingAgent is a fake agent whose deploy reads the bundle, streams
// msgs (API version protocol), then holds the stream open until the
// client goes away, which it reports on gone.
func streamingAgent(t *testing.T, protocol int, msgs []api.Message, gone chan<- struct{}) {
	t.Helper()
	fakeAgent(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(api.ProtocolHeader, fmt.Sprint(protocol))
		if r.URL.Path == "/v1/apps/web" {
			json.NewEncoder(w).Encode(api.AppStatus{Name: "web", Serving: "v8"})
			return
		}
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		for _, m := range msgs {
			enc.Encode(m)
			http.NewResponseController(w).Flush()
		}
		<-r.Context().Done()
		gone <- struct{}{}
	})
}

// runUntil runs the command line with args in a context that ends
// (Ctrl-C) once the output shows until ("" for never), and returns the
// output and the error.
func runUntil(t *testing.T, until string, args ...string) (string, error) {
	t.Helper()
	out := &testenv.SyncBuffer{}
	root := NewRootCommand(out, out)
	root.SetArgs(args)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if until != "" {
		go func() {
			for !strings.Contains(out.String(), until) {
				time.Sleep(10 * time.Millisecond)
			}
			cancel()
		}()
	}
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// exitCode is the exit status err asks for: 0 for nil, 1 for an error
// that names none.
func exitCode(err error) int {
	var ee *exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	}
	return 1
}

func bundleFile(t *testing.T, size int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "app.zip")
	b := make([]byte, size)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// accepted is the stream of a deploy of web v9 the agent accepted, that
// waits for its new version's health check.
var accepted = []api.Message{
	{Operation: &agent.Operation{App: "web", Kind: "deploy", Label: "v9"}},
	{Step: "build"}, {Step: "health"}, {Step: "health", Line: "check 1 failed"},
}

// TestDetachReturnsOnceAccepted: --detach returns 0 as soon as the agent
// said it accepted the deploy, with what it accepted and how to watch and
// stop it, and closes its stream.
func TestDetachReturnsOnceAccepted(t *testing.T) {
	gone := make(chan struct{}, 1)
	streamingAgent(t, api.Protocol, accepted, gone)
	out, err := runUntil(t, "", "deploy", bundleFile(t, 1000), "--app", "web", "--detach")
	if err != nil {
		t.Fatalf("deploy --detach: %v\n%s", err, out)
	}
	for _, want := range []string{"accepted: the deploy of web v9 runs on the agent", "watch it: sprout events --app web --follow\n", "stop it:  sprout abort --app web\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("the output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "==> build") {
		t.Errorf("--detach went on printing the deploy's progress once accepted:\n%s", out)
	}
	if strings.Contains(out, "running ahead") {
		t.Errorf("the hints of a running deploy speak of one running ahead:\n%s", out)
	}
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Error("the CLI did not close the stream")
	}
}

// TestQueuedOperationHints: a deploy queued behind another says, when
// detached, that `sprout abort` stops the operation running ahead of it
// too; followed, once an abort cancels it, it fails with the abort's
// reason and what keeps serving, and exits 1.
func TestQueuedOperationHints(t *testing.T) {
	queued := []api.Message{
		{Line: "another deploy of web is in progress; waiting for it to finish"},
		{Operation: &agent.Operation{App: "web", Kind: "deploy", Label: "v9", Queued: true}},
	}
	gone := make(chan struct{}, 1)
	streamingAgent(t, api.Protocol, queued, gone)
	out, err := runUntil(t, "", "deploy", bundleFile(t, 1000), "--app", "web", "--detach")
	if err != nil {
		t.Fatalf("deploy --detach: %v\n%s", err, out)
	}
	for _, want := range []string{
		"accepted: the deploy of web v9 is queued behind the operation in flight",
		"stop it:  sprout abort --app web\n            (this also stops the operation running ahead of it, and cancels every one queued)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the output lacks %q:\n%s", want, out)
		}
	}
	<-gone

	cancelled := append(queued, api.Message{Done: true, Error: agent.ErrCancelled.Error() + " (by alice@laptop): it never started"})
	streamingAgent(t, api.Protocol, cancelled, gone)
	out, err = runUntil(t, "", "deploy", bundleFile(t, 1000), "--app", "web")
	if code := exitCode(err); code != 1 || err == nil {
		t.Fatalf("a cancelled deploy exits %d (%v), want 1\n%s", code, err, out)
	}
	for _, want := range []string{"deploy of web failed: cancelled by `sprout abort` while it was queued (by alice@laptop): it never started", "v8 keeps serving"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error lacks %q: %v", want, err)
		}
	}
	<-gone
}

// TestCtrlCStopsFollowing: Ctrl-C once the agent accepted the deploy
// stops following it, says that it goes on, at which step, and how to
// watch and stop it (with the flag that chose the agent), and exits 130.
func TestCtrlCStopsFollowing(t *testing.T) {
	gone := make(chan struct{}, 1)
	streamingAgent(t, api.Protocol, accepted, gone)
	sock := os.Getenv("SPROUT_SOCKET")
	out, err := runUntil(t, "check 1 failed", "deploy", bundleFile(t, 1000), "--app", "web", "--socket", sock)
	if code := exitCode(err); code != 130 {
		t.Errorf("exit %d (%v), want 130", code, err)
	}
	for _, want := range []string{
		"stopped following: the deploy of web v9 goes on on the agent (at health)",
		"watch it: sprout events --app web --follow --socket " + sock + "\n",
		"stop it:  sprout abort --app web --socket " + sock + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the output lacks %q:\n%s", want, out)
		}
	}
	<-gone
}

// TestCtrlCDuringUpload: Ctrl-C before the agent has the whole bundle
// says that nothing changed.
func TestCtrlCDuringUpload(t *testing.T) {
	reading := make(chan struct{})
	fakeAgent(t, func(w http.ResponseWriter, r *http.Request) {
		// Read a little, then nothing: the upload stalls.
		io.ReadFull(r.Body, make([]byte, 1024))
		close(reading)
		<-r.Context().Done()
	})
	done := make(chan struct{})
	var out string
	var err error
	go func() {
		defer close(done)
		out, err = runUntil(t, "==> upload", "deploy", bundleFile(t, 32<<20), "--app", "web")
	}()
	<-reading
	<-done
	if code := exitCode(err); code != 130 {
		t.Errorf("exit %d (%v), want 130", code, err)
	}
	if !strings.Contains(out, "stopped during the upload: the agent did not get the whole bundle, so nothing changed on web") {
		t.Errorf("the output does not say that nothing changed:\n%s", out)
	}
}

// TestCtrlCWithAnOldAgent: an agent of API version 1 cancels the deploy
// when its client goes away; Ctrl-C says so rather than that it goes on.
func TestCtrlCWithAnOldAgent(t *testing.T) {
	gone := make(chan struct{}, 1)
	streamingAgent(t, 1, accepted[1:], gone)
	out, err := runUntil(t, "check 1 failed", "deploy", bundleFile(t, 1000), "--app", "web")
	if code := exitCode(err); code != 130 {
		t.Errorf("exit %d (%v), want 130", code, err)
	}
	if !strings.Contains(out, "this agent (API version 1) cancels the deploy of web when its client goes away") || strings.Contains(out, "goes on") {
		t.Errorf("Ctrl-C with an old agent:\n%s", out)
	}
	<-gone
}

// TestLostConnectionAfterAccepted: a connection that breaks once the
// agent accepted the deploy does not fail it: the CLI asks the agent
// again and says that it goes on there (with the hints), or that it
// ended since and what serves, or that the agent cannot be reached; and
// exits 1.
func TestLostConnectionAfterAccepted(t *testing.T) {
	for _, tc := range []struct {
		status *api.AppStatus
		want   string
	}{
		{&api.AppStatus{Name: "web", Serving: "v8", InFlight: []agent.Operation{{App: "web", Kind: "deploy", Label: "v9", Step: "health"}}},
			"the deploy of web v9 goes on on the agent (at health), but this CLI lost its connection to it"},
		{&api.AppStatus{Name: "web", Serving: "v9"}, "while the deploy of web v9 ran; it has ended since, and web serves v9: `sprout versions --app web` says how it ended"},
		{nil, "cannot reach it again"},
	} {
		fakeAgent(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(api.ProtocolHeader, fmt.Sprint(api.Protocol))
			if r.URL.Path == "/v1/apps/web" {
				if tc.status == nil {
					http.Error(w, "down", http.StatusBadGateway)
					return
				}
				json.NewEncoder(w).Encode(tc.status)
				return
			}
			io.Copy(io.Discard, r.Body)
			enc := json.NewEncoder(w)
			for _, m := range accepted {
				enc.Encode(m)
			}
			http.NewResponseController(w).Flush()
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
		})
		out, err := runUntil(t, "", "deploy", bundleFile(t, 1000), "--app", "web")
		if code := exitCode(err); code != 1 {
			t.Errorf("exit %d (%v), want 1", code, err)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("a lost connection, then status %+v: %v, want %q\n%s", tc.status, err, tc.want, out)
		}
		if tc.status != nil && tc.status.Serving == "v8" && !strings.Contains(err.Error(), "sprout abort --app web") {
			t.Errorf("no hint to stop the deploy that goes on: %v", err)
		}
	}
}

// TestHostArgs: the hints repeat --host or SPROUT_HOST, quoted for a
// shell when needed.
func TestHostArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  string
		want string
	}{
		{nil, "", ""},
		{[]string{"--host", "ssh://deploy@web-1:2222"}, "", " --host ssh://deploy@web-1:2222"},
		{nil, "ssh://web-1", " --host ssh://web-1"},
		{[]string{"--socket", "/tmp/my agent.sock"}, "", " --socket '/tmp/my agent.sock'"},
	} {
		t.Setenv("SPROUT_HOST", tc.env)
		root := NewRootCommand(io.Discard, io.Discard)
		cmd, _, err := root.Find([]string{"deploy"})
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.ParseFlags(tc.args); err != nil {
			t.Fatal(err)
		}
		if got := hostArgs(cmd); got != tc.want {
			t.Errorf("%v, SPROUT_HOST=%q: %q, want %q", tc.args, tc.env, got, tc.want)
		}
	}
}
