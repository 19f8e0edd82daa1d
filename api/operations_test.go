package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/agent"
)

// held is how many messages l holds.
func (l *opLog) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.msgs)
}

// eventually fails t unless cond holds within 10 seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", what)
		}
	}
}

// TestOpLogKeepsOnlyWhatTheFollowerHasYetToSend: the log of an operation
// gives up each message once its follower sent it, and keeps nothing once
// the follower has gone, however much the operation still says; the
// follower still gets every message, in order, and the last one.
func TestOpLogKeepsOnlyWhatTheFollowerHasYetToSend(t *testing.T) {
	l := &opLog{wake: make(chan struct{})}
	rec := httptest.NewRecorder()
	ctx, leave := context.WithCancel(context.Background())
	followed := make(chan struct{})
	go func() {
		l.follow(ctx, rec)
		close(followed)
	}()
	for i := range 100 {
		l.Line(fmt.Sprint("line ", i))
	}
	eventually(t, "the follower sent 100 lines, and the log still holds some", func() bool { return l.held() == 0 })
	l.Step("build")
	for i := 100; i < 200; i++ {
		l.Line(fmt.Sprint("line ", i))
	}
	eventually(t, "the log holds what the follower sent", func() bool { return l.held() == 0 })

	// The follower leaves: what the operation says now is dropped.
	leave()
	<-followed
	line := strings.Repeat("x", 1024)
	for range 10_000 { // 10 MiB of build output
		l.Line(line)
	}
	l.Step("health")
	if n := l.held(); n != 0 {
		t.Errorf("with its follower gone, the log holds %d messages, want 0", n)
	}
	if l.step != "health" {
		t.Errorf("with its follower gone, the log is at step %q, want health", l.step)
	}
	if unheard := l.finish(nil, agent.ErrAborted); !unheard {
		t.Error("an operation that failed before it began, its follower gone, is not unheard")
	}

	// What the follower sent: 200 lines in order, and the step between.
	var got []Message
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		var m Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		got = append(got, m)
	}
	if len(got) != 201 {
		t.Fatalf("the follower sent %d messages, want 201", len(got))
	}
	for i, m := range got {
		want := fmt.Sprint("line ", i)
		switch {
		case i == 100:
			want = ""
		case i > 100:
			want = fmt.Sprint("line ", i-1)
		}
		if m.Line != want {
			t.Fatalf("message %d is %+v, want %q", i, m, want)
		}
	}
}

// TestOpLogFollowedToTheEnd: a follower that stays gets every message
// and the last; an operation refused before it said anything gets an
// error status.
func TestOpLogFollowedToTheEnd(t *testing.T) {
	l := &opLog{wake: make(chan struct{})}
	rec := httptest.NewRecorder()
	followed := make(chan struct{})
	go func() {
		l.follow(context.Background(), rec)
		close(followed)
	}()
	l.Step("build")
	l.Line("built")
	if l.finish(nil, nil) {
		t.Error("an operation that succeeded is unheard")
	}
	<-followed
	if body := rec.Body.String(); strings.Count(body, "\n") != 3 || !strings.Contains(body, `"line":"built"`) || !strings.Contains(body, `"done":true`) {
		t.Errorf("the follower got:\n%s", body)
	}
	if n := l.held(); n != 0 {
		t.Errorf("after its end, the log holds %d messages", n)
	}

	l = &opLog{wake: make(chan struct{})}
	l.finish(nil, fmt.Errorf("%w: no such app", agent.ErrInvalid))
	rec = httptest.NewRecorder()
	l.follow(context.Background(), rec)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "no such app") {
		t.Errorf("a refused operation: %d %s", rec.Code, rec.Body)
	}
}
