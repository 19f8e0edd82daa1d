package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
)

// acceptWait is how long Ctrl-C waits for the agent to say that it
// accepted an operation whose request it has whole.
const acceptWait = 3 * time.Second

// exitInterrupted is the exit status of a command stopped by Ctrl-C.
const exitInterrupted = 130

// following follows an operation the agent runs (a deploy, rollback,
// setenv or scale) as it streams its progress. The operation is the
// agent's once it has accepted it: Ctrl-C (or SIGTERM, or a lost
// connection) stops the following, not the operation, and says how to
// watch it and how to stop it; with detach, the following stops as soon
// as the agent has accepted it.
type following struct {
	c      *cli
	cmd    *cobra.Command
	client *api.Client
	p      *printer
	// kind is what runs (deploy, rollback, setenv, scale) and app on what;
	// detail ends its description (" to 4 instances").
	kind, app, detail string
	detach            bool

	accepted     chan struct{} // closed when the agent said it accepted it
	acceptedOnce sync.Once
	mu           sync.Mutex
	op           *agent.Operation // what it accepted
	step         string           // the step it was at, last heard
	warnedOld    bool
	// body is the request's body when it is sent through upload.
	body *uploadBody
}

func (c *cli) following(cmd *cobra.Command, client *api.Client, p *printer, kind, app string, detach bool) *following {
	client.By = whoShort()
	return &following{c: c, cmd: cmd, client: client, p: p, kind: kind, app: app, detach: detach, accepted: make(chan struct{})}
}

// upload wraps the request's body, so that Ctrl-C can abandon it before
// it went out whole.
func (f *following) upload(r io.Reader) io.Reader {
	f.body = &uploadBody{r: r}
	return f.body
}

// uploadBody is a request's body that may be abandoned: once it is, it
// never ends, so the agent never has all of it and starts nothing.
type uploadBody struct {
	r               io.Reader
	mu              sync.Mutex
	sent, abandoned bool
}

func (u *uploadBody) Read(b []byte) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.abandoned {
		return 0, errAbandoned
	}
	n, err := u.r.Read(b)
	u.sent = err == io.EOF
	return n, err
}

// abandon abandons the body unless it went out whole, and tells whether
// it did.
func (u *uploadBody) abandon() bool {
	if u == nil {
		return false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.abandoned = !u.sent
	return u.abandoned
}

var errAbandoned = errors.New("the upload was stopped")

// on hears each message of the stream.
func (f *following) on(m api.Message) {
	if m.Operation != nil {
		f.mu.Lock()
		f.op = m.Operation
		f.mu.Unlock()
		f.acceptedOnce.Do(func() { close(f.accepted) })
		return
	}
	f.mu.Lock()
	if m.Step != "" {
		f.step = m.Step
	}
	warn := f.detach && !f.warnedOld && f.oldAgent()
	f.warnedOld = f.warnedOld || warn
	f.mu.Unlock()
	if f.detach && f.isAccepted() {
		return // detaching: what comes now is the agent's to tell
	}
	if warn {
		fmt.Fprintf(f.c.err, "note: this agent (API version %d) cannot run the %s without this CLI: following it to the end (upgrade the agent for --detach)\n", f.client.AgentProtocol(), f.kind)
	}
	f.p.on(m)
}

// run sends the request with start and follows the operation to its end:
// it returns the stream's last message, or the error failed makes of the
// operation's. When it stops following before the end, having said so,
// it returns no message, and the command's exit as the error (nil for
// --detach).
func (f *following) run(start func(context.Context, func(api.Message)) (*api.Message, error), failed func(error) error) (*api.Message, error) {
	last, done, err := f.follow(start)
	if done && err != nil {
		return nil, failed(err)
	}
	return last, err
}

// follow is run; done is false when it stopped following.
func (f *following) follow(start func(context.Context, func(api.Message)) (*api.Message, error)) (last *api.Message, done bool, err error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(f.cmd.Context()))
	defer cancel()
	type result struct {
		last *api.Message
		err  error
	}
	res := make(chan result, 1)
	go func() {
		last, err := start(ctx, f.on)
		res <- result{last, err}
	}()
	stop := func() { cancel(); <-res }
	var detached, acceptedLate <-chan struct{}
	if f.detach {
		detached = f.accepted
	}
	interrupted := f.cmd.Context().Done()
	var grace <-chan time.Time
	for {
		select {
		case r := <-res:
			if r.err != nil && f.isAccepted() && !f.oldAgent() && !errors.As(r.err, new(*api.OpError)) && !errors.As(r.err, new(*api.StatusError)) {
				return nil, false, f.lost(r.err)
			}
			return r.last, true, r.err
		case <-detached:
			stop()
			fmt.Fprintf(f.c.out, "%s accepted: %s %s on the agent\n%s\n", f.p.elapsed(), f.what(), f.state(), f.hints())
			return nil, false, nil
		case <-acceptedLate:
			return f.stopFollowing(stop)
		case <-interrupted:
			interrupted = nil
			switch {
			case f.oldAgent():
				return f.stopOld(stop)
			case f.isAccepted():
				return f.stopFollowing(stop)
			case f.body.abandon():
				stop()
				fmt.Fprintf(f.c.err, "\nstopped during the upload: the agent did not get the whole bundle, so nothing changed on %s\n", f.app)
				return nil, false, &exitError{exitInterrupted}
			}
			// The agent has the request: wait a moment for it to say
			// that it accepted it.
			acceptedLate, grace = f.accepted, time.After(acceptWait)
		case <-grace:
			if f.oldAgent() {
				return f.stopOld(stop)
			}
			stop()
			fmt.Fprintf(f.c.err, "\nstopped following before the agent said it accepted the %s of %s: it may still run\n%s\n", f.kind, f.app, f.hints())
			return nil, false, &exitError{exitInterrupted}
		}
	}
}

// oldAgent tells whether the agent cancels operations whose client goes
// away (API version 1).
func (f *following) oldAgent() bool {
	v := f.client.AgentProtocol()
	return v != 0 && v < api.ProtocolOutlives
}

// stopOld ends the following on Ctrl-C with an agent that then cancels
// the operation.
func (f *following) stopOld(stop func()) (*api.Message, bool, error) {
	stop()
	fmt.Fprintf(f.c.err, "\nstopped: this agent (API version %d) cancels the %s of %s when its client goes away; `sprout versions --app %s` shows how it ended. Upgrade the agent so that operations outlive the CLI.\n", f.client.AgentProtocol(), f.kind, f.app, f.app)
	return nil, false, &exitError{exitInterrupted}
}

// recheckWait bounds how long a CLI that lost its connection to the
// agent tries again to ask it how the operation goes.
const recheckWait = 10 * time.Second

// lost says what became of an accepted operation whose stream broke
// (err): it asks the agent again, on a new connection, whether it still
// runs. An agent that does not answer may have stopped (its next start
// undoes the operation) or be out of reach.
func (f *following) lost(err error) error {
	ctx, cancel := context.WithTimeout(f.cmd.Context(), recheckWait)
	defer cancel()
	st, serr := f.client.Status(ctx, f.app)
	op := f.operation()
	switch {
	case serr != nil:
		return fmt.Errorf("this CLI lost its connection to the agent (%v) and cannot reach it again (%v): if the agent still runs, %s goes on there; if it stopped, its next start undoes it\n%s", err, serr, f.what(), f.hints())
	case slices.ContainsFunc(st.InFlight, func(x agent.Operation) bool { return x.Kind == op.Kind && x.StartedAt.Equal(op.StartedAt) }):
		return fmt.Errorf("%s goes on on the agent%s, but this CLI lost its connection to it: %v\n%s", f.what(), f.at(), err, f.hints())
	}
	return fmt.Errorf("this CLI lost its connection to the agent (%v) while %s ran; it has ended since, and %s serves %s: `sprout versions --app %s%s` says how it ended", err, f.what(), f.app, orDash(st.Serving), f.app, hostArgs(f.cmd))
}

// operation is what the agent said it accepted, last.
func (f *following) operation() agent.Operation {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.op == nil {
		return agent.Operation{}
	}
	return *f.op
}

// stopFollowing ends the following of an accepted operation on Ctrl-C.
func (f *following) stopFollowing(stop func()) (*api.Message, bool, error) {
	stop()
	fmt.Fprintf(f.c.err, "\nstopped following: %s goes on on the agent%s\n%s\n", f.what(), f.at(), f.hints())
	return nil, false, &exitError{exitInterrupted}
}

func (f *following) isAccepted() bool {
	select {
	case <-f.accepted:
		return true
	default:
		return false
	}
}

// what names the operation: "the deploy of web v9".
func (f *following) what() string {
	label := f.operation().Label
	switch {
	case f.kind == "deploy" && label != "":
		return fmt.Sprintf("the deploy of %s %s", f.app, label)
	case f.kind == "rollback" && label != "":
		return fmt.Sprintf("the rollback of %s to %s", f.app, label)
	case f.kind == "setenv":
		return "the environment change of " + f.app
	}
	return fmt.Sprintf("the %s of %s%s", f.kind, f.app, f.detail)
}

// state says whether the accepted operation runs or waits.
func (f *following) state() string {
	if f.queued() {
		return "is queued behind the operation in flight"
	}
	return "runs"
}

// at says the step the operation was at, last heard.
func (f *following) at() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.op != nil && f.op.Queued && f.step == "":
		return " (queued behind the operation in flight)"
	case f.step != "" && f.step != "upload":
		return " (at " + f.step + ")"
	}
	return ""
}

// hints says how to watch the operation and how to stop it, as commands
// that can be pasted. Abort stops what runs on the app and cancels every
// operation queued: for a queued one, the hint says what else it stops.
func (f *following) hints() string {
	to := hostArgs(f.cmd)
	h := fmt.Sprintf("  watch it: sprout events --app %s --follow%s\n  stop it:  sprout abort --app %s%s", f.app, to, f.app, to)
	if f.queued() {
		h += "\n            (this also stops the operation running ahead of it, and cancels every one queued)"
	}
	return h
}

// queued tells whether the agent said, last, that the operation waits
// behind another.
func (f *following) queued() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.op != nil && f.op.Queued
}

// detachFlag adds --detach to an operation's command.
func detachFlag(cmd *cobra.Command, detach *bool) {
	cmd.Flags().BoolVar(detach, "detach", false, "return as soon as the agent has accepted the operation, which runs to its end there (watch it with `sprout events --follow`)")
}

// hostArgs repeats the flags or environment that chose the agent, for a
// command to paste.
func hostArgs(cmd *cobra.Command) string {
	host, _ := cmd.Flags().GetString("host")
	if host == "" {
		host = os.Getenv("SPROUT_HOST")
	}
	if host != "" {
		return " --host " + shellQuote(host)
	}
	if f := cmd.Flags().Lookup("socket"); f != nil && f.Changed {
		return " --socket " + shellQuote(f.Value.String())
	}
	return ""
}

var shellSafe = regexp.MustCompile(`^[A-Za-z0-9@%+=:,./_-]+$`)

func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
