package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// Service routes one app's public port(s) to its current set of targets.
// The set is swapped as one pointer; the request path takes no lock.
type Service struct {
	app      string
	opts     Options
	log      *slog.Logger
	errorLog *log.Logger

	obs AppObserver

	targets atomic.Pointer[[]*Target]
	next    atomic.Uint64
}

func newService(app string, opts Options, logger *slog.Logger) *Service {
	s := &Service{app: app, opts: opts, log: logger.With("app", app), obs: nopObserver{}}
	if opts.Observer != nil {
		s.obs = opts.Observer.App(app)
	}
	s.errorLog = slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	return s
}

// pick returns a target that is not draining, counted as in flight, or
// nil when the app has none.
func (s *Service) pick() *Target {
	for {
		set := s.targets.Load()
		if set == nil || len(*set) == 0 {
			return nil
		}
		ts := *set
		t := ts[0]
		if len(ts) > 1 {
			t = ts[s.next.Add(1)%uint64(len(ts))]
		}
		if t.acquire() {
			return t
		}
		// t began draining after we loaded the set: a newer set is
		// already installed, so load again.
	}
}

// requestState follows one request for the access log and the drain.
type requestState struct {
	http.ResponseWriter
	target *Target
	status int
	bytes  int64
	stream bool
}

func (w *requestState) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
		if w.target != nil && code < 300 && isEventStream(w.Header().Get("Content-Type")) {
			w.markStream()
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

// markStream counts the request as a long-lived stream of its target.
func (w *requestState) markStream() {
	if !w.stream {
		w.stream = true
		w.target.streams.Add(1)
	}
}

// Hijack is how the reverse proxy takes over an upgraded connection
// (websockets): the request becomes a stream.
func (w *requestState) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.target != nil {
		w.markStream()
	}
	w.status = http.StatusSwitchingProtocols
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *requestState) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *requestState) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP forwards one request to a target of the app.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := &requestState{ResponseWriter: w}
	target := ""
	s.obs.Start()
	defer func() {
		took := time.Since(start)
		s.obs.Done(r.Method, st.status, took, st.bytes)
		if s.opts.AccessLog {
			s.accessLog(r, st, target, took)
		}
	}()

	if s.opts.MaxBodyBytes > 0 {
		if r.ContentLength > s.opts.MaxBodyBytes {
			s.writeError(st, r, http.StatusRequestEntityTooLarge, "request body too large")
			return
		}
		r.Body = http.MaxBytesReader(st, r.Body, s.opts.MaxBodyBytes)
	}
	t := s.pick()
	if t == nil {
		s.obs.UpstreamError("no_target")
		s.writeError(st, r, http.StatusServiceUnavailable, "no version of this app is serving yet")
		return
	}
	st.target = t
	defer t.release(st)
	target = t.addr
	if isUpgrade(r) {
		t.rp.ServeHTTP(st, r)
		return
	}
	if err := t.roundTrip(st, r, s.opts.UpstreamTimeout); err != nil {
		s.proxyError(st, r, err)
	}
}

// StatusClientClosedRequest is logged when the client went away before the
// response was written (nginx's 499).
const StatusClientClosedRequest = 499

// classify is the one place that turns an upstream failure into a status
// and a message for the client.
func classify(t *Target, err error) (int, string) {
	var tooBig *http.MaxBytesError
	var netErr net.Error
	var clientErr *bodyError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, "request body too large"
	case t != nil && t.cut.Load():
		return http.StatusServiceUnavailable, "the version serving this request was retired"
	case errors.Is(err, context.Canceled), errors.As(err, &clientErr):
		return StatusClientClosedRequest, ""
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return http.StatusGatewayTimeout, "the app took too long to answer"
	}
	return http.StatusBadGateway, "the app could not be reached"
}

// proxyError answers a request of the net/http path that failed upstream.
func (s *Service) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st, _ := w.(*requestState)
	var t *Target
	if st != nil {
		t = st.target
	}
	status, msg := classify(t, err)
	if status == StatusClientClosedRequest {
		if st != nil {
			st.status = status
		}
		return
	}
	s.upstreamError(status, err)
	s.writeError(w, r, status, msg)
}

// upstreamError logs and counts a request the app could not answer.
func (s *Service) upstreamError(status int, err error) {
	kind := "unreachable"
	switch status {
	case http.StatusGatewayTimeout:
		kind = "timeout"
	case http.StatusServiceUnavailable:
		kind = "retired"
	case http.StatusRequestEntityTooLarge:
		return // the client's fault, not the app's
	}
	s.obs.UpstreamError(kind)
	s.log.LogAttrs(context.Background(), slog.LevelWarn, "upstream error", slog.Int("status", status), slog.String("error", err.Error()))
}

func errorBody(app string, status int, msg string) string {
	return fmt.Sprintf("%d %s: %s (sprout, app %s)\n", status, http.StatusText(status), msg, app)
}

func (s *Service) writeError(w http.ResponseWriter, r *http.Request, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	if status == http.StatusServiceUnavailable {
		h.Set("Retry-After", "1")
	}
	w.WriteHeader(status)
	io.WriteString(w, errorBody(s.app, status, msg))
}

func (s *Service) accessLog(r *http.Request, st *requestState, target string, took time.Duration) {
	s.logRequest(r.Method, r.URL.Path, r.Host, r.RemoteAddr, st.status, st.bytes, target, took)
}

// logRequest writes one access-log line.
func (s *Service) logRequest(method, path, host, remote string, status int, bytes int64, target string, took time.Duration) {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i] // queries may carry secrets and unbounded values
	}
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "request",
		slog.String("method", method),
		slog.String("path", path),
		slog.String("host", host),
		slog.Int("status", status),
		slog.Int64("bytes", bytes),
		slog.Float64("duration_ms", float64(took.Microseconds())/1000),
		slog.String("remote", remote),
		slog.String("upstream", target),
	)
}
