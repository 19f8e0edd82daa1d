package api

import (
	"context"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/store"
)

// run starts an operation (a deploy, rollback, setenv or scale) on a
// context of the agent's, not of the request, and follows it for the
// client until it ends or the client goes away: Ctrl-C, a dropped ssh
// session or a cancelled CI job stop the following, never the operation.
// Only `sprout abort` stops it (see agent/operations.go).
func (s *Server) run(w http.ResponseWriter, r *http.Request, kind string, op func(context.Context, agent.Progress) (*store.Version, error)) {
	// Read the request to its end, so that the server sees the client
	// go away (it looks once the body is read).
	io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
	v, _ := parseProtocol(r.Header.Get(ProtocolHeader))
	l := &opLog{accepted: v >= ProtocolOutlives, wake: make(chan struct{})}
	ctx := agent.WithStartedBy(context.WithoutCancel(r.Context()), r.Header.Get(ByHeader))
	go func() {
		v, err := op(ctx, l)
		if l.finish(v, err) {
			// Its client left (--detach, Ctrl-C) before it failed, and
			// before a rollout that would have recorded why.
			s.agent.RecordUnheard(r.PathValue("app"), kind, err)
		}
	}()
	l.follow(r.Context(), w)
}

// opLog is what an operation reports, kept for the client that follows
// it. The operation writes here without waiting for anyone, so that a
// client that reads slowly, or stopped reading, cannot hold it up. It
// holds only what its follower has not sent yet, and nothing once the
// follower has gone: no API attaches to an operation again (`sprout
// events --follow` reads the agent's events), so a long, noisy build
// keeps no megabytes of output nobody will read.
type opLog struct {
	// accepted: the client hears Operation messages (API version 2).
	accepted bool

	mu sync.Mutex
	// msgs are the messages the follower has yet to send; it takes them
	// all at once.
	msgs []Message
	step string
	end  *Message // the last message, once the operation ended
	err  error    // the operation's error
	wake chan struct{}
	// began: its rollout began; gone: its client stopped following.
	began, gone bool
}

// add appends m and wakes the follower; with the follower gone, it drops
// m.
func (l *opLog) add(m Message) {
	m.Time = time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gone {
		return
	}
	l.msgs = append(l.msgs, m)
	close(l.wake)
	l.wake = make(chan struct{})
}

// Step implements agent.Progress.
func (l *opLog) Step(name string) {
	l.mu.Lock()
	l.step = name
	l.mu.Unlock()
	l.add(Message{Step: name})
}

// Line implements agent.Progress.
func (l *opLog) Line(text string) {
	l.mu.Lock()
	step := l.step
	l.mu.Unlock()
	l.add(Message{Step: step, Line: text})
}

// Operation implements agent.OperationWatcher.
func (l *opLog) Operation(op agent.Operation) {
	l.mu.Lock()
	l.began = l.began || !op.Queued
	l.mu.Unlock()
	if l.accepted {
		l.add(Message{Operation: &op})
	}
}

// finish records how the operation ended, and tells whether it failed
// unheard: before its rollout began, with no client following.
func (l *opLog) finish(v *store.Version, err error) (unheard bool) {
	m := doneMessage(v, err)
	m.Time = time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.end, l.err = &m, err
	close(l.wake)
	l.wake = make(chan struct{})
	return err != nil && l.gone && !l.began
}

// follow streams the log to w until the operation ends or ctx (the
// request's) does, taking each message out of the log as it sends it. An
// operation refused before it reported anything gets an error status
// instead.
func (l *opLog) follow(ctx context.Context, w http.ResponseWriter) {
	st := &stream{w: w}
	for sent := false; ; {
		l.mu.Lock()
		msgs, end, err, wake := l.msgs, l.end, l.err, l.wake
		l.msgs = nil // the follower owns msgs now: add starts a new slice
		l.mu.Unlock()
		if end != nil && err != nil && !sent && len(msgs) == 0 {
			writeError(w, err)
			return
		}
		for _, m := range msgs {
			st.send(m)
		}
		sent = sent || len(msgs) > 0
		if end != nil {
			st.send(*end)
			return
		}
		select {
		case <-wake:
		case <-ctx.Done():
			l.mu.Lock()
			l.gone, l.msgs = true, nil
			l.mu.Unlock()
			return
		}
	}
}

var _ agent.OperationWatcher = (*opLog)(nil)

// operations lists the agent's operations in flight, on every app.
func (s *Server) operations(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, s.agent.InFlight())
}
