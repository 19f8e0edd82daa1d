package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/store"
	"github.com/sprout-paas/sprout/transport"
)

// ErrNoAgent means nothing answers on the socket.
var ErrNoAgent = transport.ErrNoAgent

// ErrIncompatible means the CLI and the agent speak no API version in
// common; the message says which side to upgrade.
var ErrIncompatible = errors.New("the CLI and the agent speak different API versions")

// Client talks to an agent over its unix socket, or through any other
// transport.Dialer (ssh).
type Client struct {
	http *http.Client
	// By says who runs the client (user@host); the agent records it with
	// the operations the client starts.
	By string
	// agentProtocol is the API version the agent last answered with.
	agentProtocol atomic.Int64
}

// NewClient returns a client of the agent listening on socket.
func NewClient(socket string) *Client { return NewClientWith(transport.Unix{Path: socket}) }

// NewClientWith returns a client of the agent d reaches. Connections are
// kept alive between requests: over ssh, a CLI command that makes several
// requests starts one ssh session, not one per request.
func NewClientWith(d transport.Dialer) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.Dial(ctx)
		},
		DisableCompression: true,
		IdleConnTimeout:    30 * time.Second,
	}
	return &Client{http: &http.Client{Transport: tr}}
}

func (c *Client) url(path string, q url.Values) string {
	u := "http://sprout/" + Version + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// handOverWait bounds how long a read asked during an agent's upgrade is
// asked again, until the new agent process answers it.
const handOverWait = DefaultUpgradeTimeout

// do sends req. A read the agent cannot answer for a moment (503 with
// Retry-After: it hands over to a new process) is sent again until one
// answers, on a new connection once the old process closes its own.
func (c *Client) do(req *http.Request) (*http.Response, error) {
	deadline := time.Now().Add(handOverWait)
	for {
		resp, err := c.doOnce(req)
		var se *StatusError
		if req.Method != http.MethodGet || !errors.As(err, &se) || !se.retry || time.Now().After(deadline) {
			return resp, err
		}
		select {
		case <-req.Context().Done():
			return nil, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Client) doOnce(req *http.Request) (*http.Response, error) {
	req.Header.Set(ProtocolHeader, strconv.Itoa(Protocol))
	if c.By != "" {
		req.Header.Set(ByHeader, c.By)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// The transport's sentence says what failed; the request's URL
		// would only hide it.
		if te := (*transport.Error)(nil); errors.As(err, &te) {
			return nil, te
		}
		return nil, err
	}
	if err := checkAgentProtocol(resp.Header.Get(ProtocolHeader)); err != nil {
		resp.Body.Close()
		return nil, err
	}
	if v, err := parseProtocol(resp.Header.Get(ProtocolHeader)); err == nil {
		c.agentProtocol.Store(int64(v))
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		var eb ErrorBody
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
			eb.Error = fmt.Sprintf("the agent answered %s: %s", resp.Status, bytes.TrimSpace(b))
		}
		se := &StatusError{Code: resp.StatusCode, Message: eb.Error, retry: resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != ""}
		if eb.Incompatible {
			se.kind = ErrIncompatible
		}
		return nil, se
	}
	return resp, nil
}

// checkAgentProtocol refuses an agent whose API version (header value h)
// this client no longer speaks. An agent newer than the client refuses
// the request itself when it no longer speaks the client's version.
func checkAgentProtocol(h string) error {
	v, err := parseProtocol(h)
	if err != nil {
		return fmt.Errorf("%w: the agent answered %s %q: %v", ErrIncompatible, ProtocolHeader, h, err)
	}
	if v < MinProtocol {
		return fmt.Errorf("%w: the agent speaks API version %d and this CLI needs %d or later: upgrade the agent (sprout on its host) to this CLI's version, or use a CLI as old as the agent", ErrIncompatible, v, MinProtocol)
	}
	return nil
}

// parseProtocol reads a ProtocolHeader value; none means 1.
func parseProtocol(h string) (int, error) {
	if h == "" {
		return 1, nil
	}
	v, err := strconv.Atoi(h)
	if err != nil || v < 0 {
		return 0, errors.New("not an API version number")
	}
	return v, nil
}

// AgentProtocol is the API version the agent answered the last request
// with, 0 before any answer.
func (c *Client) AgentProtocol() int { return int(c.agentProtocol.Load()) }

// StatusError is an error the agent answered with.
type StatusError struct {
	Code    int
	Message string
	// kind is ErrIncompatible when the agent refused the CLI's API
	// version.
	kind error
	// retry is set when the agent said to ask again (Retry-After).
	retry bool
}

func (e *StatusError) Error() string { return e.Message }

// Unwrap returns ErrIncompatible for a refused API version.
func (e *StatusError) Unwrap() error { return e.kind }

// open sends a GET and returns the answer when it is not an error.
func (c *Client) open(ctx context.Context, path string, q url.Values) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(path, q), nil)
	if err != nil {
		return nil, err
	}
	return c.do(req)
}

func (c *Client) get(ctx context.Context, path string, q url.Values, out any) error {
	resp, err := c.open(ctx, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}

// Stream sends a request whose answer is a stream of Messages, calls on for
// each one, and returns the last. A failed operation returns its error.
func (c *Client) stream(ctx context.Context, path string, q url.Values, body io.Reader, on func(Message)) (*Message, error) {
	return c.streamMethod(ctx, http.MethodPost, path, q, body, on)
}

func (c *Client) streamMethod(ctx context.Context, method, path string, q url.Values, body io.Reader, on func(Message)) (*Message, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), body)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var m Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return nil, fmt.Errorf("bad message from the agent: %w", err)
		}
		if m.Done {
			if m.Error != "" {
				return &m, &OpError{Step: m.Step, Message: m.Error}
			}
			return &m, nil
		}
		if on != nil {
			on(m)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("the connection to the agent broke: %w", err)
	}
	return nil, errors.New("the agent closed the stream before the operation finished (see its log)")
}

// OpError is a streamed operation that failed at a step.
type OpError struct {
	Step    string
	Message string
}

func (e *OpError) Error() string {
	if e.Step == "" {
		return e.Message
	}
	return e.Step + " failed: " + e.Message
}

// Agent describes the agent.
func (c *Client) Agent(ctx context.Context) (AgentInfo, error) {
	var out AgentInfo
	return out, c.get(ctx, "/agent", nil, &out)
}

// Apps lists the apps on the host.
func (c *Client) Apps(ctx context.Context) ([]AppStatus, error) {
	var out []AppStatus
	return out, c.get(ctx, "/apps", nil, &out)
}

// Status describes one app.
func (c *Client) Status(ctx context.Context, app string) (AppStatus, error) {
	var out AppStatus
	return out, c.get(ctx, "/apps/"+url.PathEscape(app), nil, &out)
}

// Versions lists an app's versions, newest first.
func (c *Client) Versions(ctx context.Context, app string) ([]store.Version, error) {
	var out []store.Version
	return out, c.get(ctx, "/apps/"+url.PathEscape(app)+"/versions", nil, &out)
}

// Env returns an app's environment, secrets masked unless show.
func (c *Client) Env(ctx context.Context, app string, show bool) (Env, error) {
	q := url.Values{}
	if show {
		q.Set("show_secrets", "1")
	}
	var out Env
	return out, c.get(ctx, "/apps/"+url.PathEscape(app)+"/env", q, &out)
}

// Health returns the enhanced health of one app, or of all when app is "".
func (c *Client) Health(ctx context.Context, app string) ([]agent.Report, error) {
	q := url.Values{}
	if app != "" {
		q.Set("app", app)
	}
	var out []agent.Report
	return out, c.get(ctx, "/health", q, &out)
}

// Operations lists the agent's operations in flight, on every app.
func (c *Client) Operations(ctx context.Context) ([]agent.Operation, error) {
	var out []agent.Operation
	return out, c.get(ctx, "/operations", nil, &out)
}

// Events lists recent events.
func (c *Client) Events(ctx context.Context, app string, limit int) ([]store.Event, error) {
	q := url.Values{"limit": {fmt.Sprint(limit)}}
	if app != "" {
		q.Set("app", app)
	}
	var out []store.Event
	return out, c.get(ctx, "/events", q, &out)
}

// BuildLog copies the transcript of a version's deploy to w.
func (c *Client) BuildLog(ctx context.Context, app, label string, w io.Writer) error {
	return c.copyText(ctx, "/apps/"+url.PathEscape(app)+"/versions/"+url.PathEscape(label)+"/deploy-log", nil, w)
}

// Logs copies an app's logs to w (q: label, since, tail, follow=1), until
// they end or ctx does.
func (c *Client) Logs(ctx context.Context, app string, q url.Values, w io.Writer) error {
	return c.copyText(ctx, "/apps/"+url.PathEscape(app)+"/logs", q, w)
}

// copyText copies a plain-text answer to w as it arrives.
func (c *Client) copyText(ctx context.Context, path string, q url.Values, w io.Writer) error {
	resp, err := c.open(ctx, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// Deploy uploads a bundle archive and streams the deploy. q carries the
// label, port and other settings (see the API server's parameters).
func (c *Client) Deploy(ctx context.Context, app string, q url.Values, bundle io.Reader, on func(Message)) (*Message, error) {
	return c.stream(ctx, "/apps/"+url.PathEscape(app)+"/deploy", q, bundle, on)
}

// Rollback serves an earlier version again.
func (c *Client) Rollback(ctx context.Context, app string, req RollbackRequest, on func(Message)) (*Message, error) {
	b, _ := json.Marshal(req)
	return c.stream(ctx, "/apps/"+url.PathEscape(app)+"/rollback", nil, bytes.NewReader(b), on)
}

// SetEnv changes an app's environment and streams its rollout.
func (c *Client) SetEnv(ctx context.Context, app string, req EnvChange, on func(Message)) (*Message, error) {
	b, _ := json.Marshal(req)
	return c.stream(ctx, "/apps/"+url.PathEscape(app)+"/env", nil, bytes.NewReader(b), on)
}

// Scale changes how many instances an app runs and streams its rollout.
func (c *Client) Scale(ctx context.Context, app string, req ScaleRequest, on func(Message)) (*Message, error) {
	b, _ := json.Marshal(req)
	return c.stream(ctx, "/apps/"+url.PathEscape(app)+"/scale", nil, bytes.NewReader(b), on)
}

// Abort stops an app's rollout in flight; it answers once every instance
// is back on the version that was serving.
func (c *Client) Abort(ctx context.Context, app string) (AbortResult, error) {
	var out AbortResult
	return out, c.post(ctx, "/apps/"+url.PathEscape(app)+"/abort", nil, &out)
}

// Volumes lists an app's volumes.
func (c *Client) Volumes(ctx context.Context, app string) ([]agent.VolumeInfo, error) {
	var out []agent.VolumeInfo
	err := c.get(ctx, "/apps/"+url.PathEscape(app)+"/volumes", nil, &out)
	return out, err
}

// ChangeVolumes adds or removes a volume and streams its rollout.
func (c *Client) ChangeVolumes(ctx context.Context, app string, req VolumeChange, on func(Message)) (*Message, error) {
	b, _ := json.Marshal(req)
	return c.stream(ctx, "/apps/"+url.PathEscape(app)+"/volumes", nil, bytes.NewReader(b), on)
}

// Upgrade makes the agent hand over to the binary now at its path and
// streams how it goes; the last message's Agent is the new agent process.
// With noWait, an operation in flight makes the agent refuse instead of
// waiting for it; timeout bounds the wait for the new process (0 for the
// agent's default).
func (c *Client) Upgrade(ctx context.Context, noWait bool, timeout time.Duration, on func(Message)) (*Message, error) {
	q := url.Values{}
	if noWait {
		q.Set("no_wait", "1")
	}
	if timeout > 0 {
		q.Set("timeout", timeout.String())
	}
	return c.stream(ctx, "/agent/upgrade", q, nil, on)
}

// Domains lists the domains of app, or of every app when app is "".
func (c *Client) Domains(ctx context.Context, app string) (DomainList, error) {
	var out DomainList
	q := url.Values{}
	if app != "" {
		q.Set("app", app)
	}
	return out, c.get(ctx, "/domains", q, &out)
}

// ChangeDomains adds and removes domains of an app, without a deploy.
func (c *Client) ChangeDomains(ctx context.Context, app string, req DomainChange, on func(Message)) (*Message, error) {
	b, _ := json.Marshal(req)
	return c.stream(ctx, "/apps/"+url.PathEscape(app)+"/domains", nil, bytes.NewReader(b), on)
}

// RemoveApp removes an app (and its volumes with purge), streaming what
// it does.
func (c *Client) RemoveApp(ctx context.Context, app string, purge bool, on func(Message)) (*Message, error) {
	q := url.Values{}
	if purge {
		q.Set("purge", "1")
	}
	return c.streamMethod(ctx, http.MethodDelete, "/apps/"+url.PathEscape(app), q, nil, on)
}

// Watch makes an app follow a manifest ("" stops following).
func (c *Client) Watch(ctx context.Context, app string, req WatchRequest) error {
	return c.post(ctx, "/apps/"+url.PathEscape(app)+"/watch", req, nil)
}

// post sends body (when not nil) as JSON and decodes the answer into out
// (when not nil).
func (c *Client) post(ctx context.Context, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url(path, nil), rd)
	if err != nil {
		return err
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
