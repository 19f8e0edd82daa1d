// Package proxy is the agent's reverse proxy. It listens on each app's
// public port, and on the shared HTTP and HTTPS ports for the apps that
// have domains (chosen by each request's Host), and forwards to the app's
// current set of targets (containers, each running a version), balancing
// over those that take requests and splitting traffic between versions. A
// deploy swaps that set atomically and then drains the old one: requests
// in flight finish, new ones go to the new set, and none is dropped.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sprout-paas/sprout/internal/httpdrain"
)

// Options tune the proxy. Zero values take the defaults.
type Options struct {
	// BindAddress is the address public ports listen on ("" means all).
	BindAddress string
	// MaxBodyBytes caps request bodies (413 beyond); 0 means no cap.
	MaxBodyBytes int64
	// UpstreamTimeout bounds the wait for an app's response headers (504
	// beyond); 0 means no bound.
	UpstreamTimeout time.Duration
	// IdleTimeout closes client keep-alive connections idle this long.
	IdleTimeout time.Duration
	// HeaderTimeout bounds the reading of each request's head: 408 and
	// closed beyond. It runs from the connection's start for its first
	// request, and from the first byte of each later one (the wait for
	// that byte is the IdleTimeout's), as net/http's ReadHeaderTimeout.
	HeaderTimeout time.Duration
	// MaxHeaderBytes bounds a request's head, its request line and
	// header fields: 431 and closed beyond. It is at least
	// MinMaxHeaderBytes and at most MaxMaxHeaderBytes.
	MaxHeaderBytes int
	// StartWait is how long a request waits for an app that has no
	// version serving yet (a first deploy) before it gets 503; negative
	// means no wait.
	StartWait time.Duration
	// AccessLog writes one structured line per request.
	AccessLog bool
	// AccessLogOutput, when set, takes the access log's lines as JSON,
	// one whole line per Write, whatever the logger's level; it must not
	// block. When nil, the lines go through the proxy's logger at Info.
	AccessLogOutput io.Writer
	// Observer, when set, hears about every request (metrics).
	Observer Observer
	// Listen opens the public ports' listeners; nil means net.Listen.
	// The agent passes its handover set's, so that an upgrade hands the
	// ports, open, to the new agent process.
	Listen func(network, addr string) (net.Listener, error)
	// HTTPPort and HTTPSPort are the shared ports of the apps that have
	// domains (see SetDomains); 0 means DefaultHTTPPort and
	// DefaultHTTPSPort. They open only while an app has domains or
	// DefaultApp is served.
	HTTPPort, HTTPSPort int
	// DefaultApp answers the requests of the shared ports whose host no
	// app claims; "" means a plain 404.
	DefaultApp string
	// Certificates, when set, gives the shared HTTPS port its
	// certificates and answers ACME HTTP-01 challenges on the shared
	// HTTP port. Without it the HTTPS port stays closed and apps with
	// domains are served on HTTP only.
	Certificates Certificates
}

// Observer hears about the requests of every app; the agent's metrics
// implement it.
type Observer interface {
	// App returns the observer of one app's requests.
	App(app string) AppObserver
}

// AppObserver hears about one app's requests. It is called on the request
// path, so it must be cheap.
type AppObserver interface {
	// Start is called when a request begins, once a target took it.
	Start()
	// Done is called when it ends, with the version of the target that
	// served it and what the client got. A request no target took is
	// not the app's: it ends in UpstreamError("", "no_target") alone.
	Done(version, method string, status int, took time.Duration, bytes int64)
	// UpstreamError counts a request the app could not answer, by the
	// version of the target that failed it ("" when no target was
	// chosen) and kind: unreachable, timeout, retired or no_target.
	UpstreamError(version, kind string)
}

type nopObserver struct{}

func (nopObserver) Start()                                         {}
func (nopObserver) Done(string, string, int, time.Duration, int64) {}
func (nopObserver) UpstreamError(string, string)                   {}

// Default option values.
const (
	DefaultIdleTimeout     = 120 * time.Second
	DefaultUpstreamTimeout = 60 * time.Second
	DefaultMaxBodyBytes    = 100 << 20
	DefaultStartWait       = 10 * time.Second
	// DefaultHeaderTimeout is Apache's (mod_reqtimeout's first bound). A
	// real client sends its head at once, in one or a few packets, so
	// 20 s leave room for a slow, lossy link (three lost packets cost
	// 1+2+4 s of retransmission), while a client trickling its head
	// holds a connection 20 s instead of the idle timeout's 120. It stays
	// above the 10 s Chrome keeps a connection it opened ahead of need
	// (a preconnect), so the proxy does not close one first.
	DefaultHeaderTimeout = 20 * time.Second
	// DefaultMaxHeaderBytes is nginx's bound (4 buffers of 8 KiB), which
	// an app moving from Elastic Beanstalk's nginx already lives within;
	// net/http's 1 MiB would let each slow client hold 32 times more.
	DefaultMaxHeaderBytes = 32 << 10
	// MinMaxHeaderBytes is the least MaxHeaderBytes: the fast path takes
	// heads up to 8 KiB (maxHead) without looking at the bound, and a
	// browser's, cookies and all, come near that.
	MinMaxHeaderBytes = maxHead
	// MaxMaxHeaderBytes is the most MaxHeaderBytes, net/http's default.
	MaxMaxHeaderBytes = 1 << 20
	// DefaultHTTPPort and DefaultHTTPSPort are the shared ports.
	DefaultHTTPPort  = 80
	DefaultHTTPSPort = 443
)

// ErrPortInUse means a public port is taken by another app or program.
var ErrPortInUse = errors.New("port in use")

// Proxy holds the services of every app on this host.
type Proxy struct {
	opts Options
	log  *slog.Logger

	mu       sync.Mutex // guards the maps; never held on the request path
	services map[string]*Service
	ports    map[int]*listener
	// domains are the apps served on the shared ports, by app.
	domains map[string]Domains
	// sites is what the shared ports route by, rebuilt (under mu) at
	// every change and read without a lock on the request path.
	sites    atomic.Pointer[siteTable]
	errorLog *log.Logger
}

// listener is one public port: the fast path accepts its connections and
// hands the unusual ones to server (on the HTTPS port, once the TLS
// handshake is done, HTTP/2 connections go to server at once).
type listener struct {
	p    *Proxy
	port int
	// owner is the app whose own port this is; nil on a shared port no
	// app has as its own. Requests of an own port all go to it.
	owner atomic.Pointer[Service]
	// shared is set on the shared ports: a request goes to the app one
	// of whose domains its Host names, else to the owner, else to
	// Options.DefaultApp, else gets 404.
	shared atomic.Bool
	// tls marks the shared HTTPS port; tlsConf is its configuration.
	tls     bool
	tlsConf *tls.Config
	ln      net.Listener
	handoff *handoff
	server  *httpdrain.Server
	// conns maps each fast-path connection (and each TLS connection
	// still in its handshake) to its *connState.
	conns   sync.Map
	closing atomic.Bool
}

// connState is what shutdown needs to know of a fast-path connection.
type connState struct {
	// idleSince is when the connection's last request ended (Unix
	// nanoseconds), or 0 while a request is in flight on it.
	idleSince atomic.Int64
}

func (st *connState) busy() { st.idleSince.Store(0) }
func (st *connState) idle() { st.idleAt(time.Now()) }

// idleAt marks the connection idle since now.
func (st *connState) idleAt(now time.Time) { st.idleSince.Store(now.UnixNano()) }
func (st *connState) idleFor(now time.Time) time.Duration {
	since := st.idleSince.Load()
	if since == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, since))
}

// app names the listener's owner, for the log and the proxy's own
// replies; "" on a shared port with none.
func (l *listener) app() string {
	if s := l.owner.Load(); s != nil {
		return s.app
	}
	return ""
}

func (l *listener) acceptLoop(log *slog.Logger) {
	serve := l.serveConn
	if l.tls {
		serve = l.handshake
	}
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Error("proxy listener stopped", "app", l.app(), "port", l.port, "error", err)
			}
			return
		}
		st := &connState{}
		st.idle()
		l.conns.Store(c, st)
		go serve(c, st)
	}
}

// closeIdleAfter is how long a closing listener leaves a keep-alive
// connection idle before it closes it. A client that sends its next
// request within it gets its answer with "Connection: close", and closes
// the connection itself; closing an idle connection instead races with a
// request the client may be sending on it (RFC 9112, 9.8), which a
// client that does not retry sees fail. Under load, the gap between two
// requests on a connection is far shorter than this.
const closeIdleAfter = 250 * time.Millisecond

// shutdown stops accepting and ends every connection as its client is
// done with it: a request in flight, or the next one that comes within
// closeIdleAfter, is answered with "Connection: close"; a connection idle
// longer is closed. When ctx ends, whatever is left is closed.
func (l *listener) shutdown(ctx context.Context) {
	// Closed first: a client told "Connection: close" that connects
	// again is refused, rather than queued and then reset.
	l.ln.Close()
	l.closing.Store(true)
	// net/http's side answers with "Connection: close" from now on; it
	// takes the connections the fast path hands it until the fast path
	// is done.
	l.server.CloseConnections()
	l.drainConns(ctx)
	l.server.Drain(ctx, closeIdleAfter)
}

// drainConns waits until the fast path has no connection left, closing
// those idle for closeIdleAfter, or, when ctx ends, all of them.
func (l *listener) drainConns(ctx context.Context) {
	idleFor := func(st any, now time.Time) time.Duration { return st.(*connState).idleFor(now) }
	if httpdrain.WaitIdle(ctx, &l.conns, closeIdleAfter, idleFor) != nil {
		l.conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
	}
}

// New returns a proxy with no apps.
func New(opts Options, logger *slog.Logger) *Proxy {
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.StartWait == 0 {
		opts.StartWait = DefaultStartWait
	}
	if opts.HeaderTimeout <= 0 {
		opts.HeaderTimeout = DefaultHeaderTimeout
	}
	if opts.MaxHeaderBytes <= 0 {
		opts.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	opts.MaxHeaderBytes = min(max(opts.MaxHeaderBytes, MinMaxHeaderBytes), MaxMaxHeaderBytes)
	if opts.HTTPPort <= 0 {
		opts.HTTPPort = DefaultHTTPPort
	}
	if opts.HTTPSPort <= 0 {
		opts.HTTPSPort = DefaultHTTPSPort
	}
	p := &Proxy{opts: opts, log: logger, services: map[string]*Service{}, ports: map[int]*listener{}, domains: map[string]Domains{},
		errorLog: slog.NewLogLogger(logger.Handler(), slog.LevelDebug)}
	p.sites.Store(&siteTable{})
	return p
}

// service returns app's service, made when it has none. p.mu is held.
func (p *Proxy) service(app string) *Service {
	s, ok := p.services[app]
	if !ok {
		s = newService(app, p.opts, p.log)
		p.services[app] = s
		p.buildSites() // the default app may have come
	}
	return s
}

// dropService forgets app's service once nothing serves the app any
// more, neither a port nor a domain, and returns it to retire; nil when
// the app is still served. p.mu is held.
func (p *Proxy) dropService(app string) *Service {
	if p.listening(app) || len(p.domains[app].Names) > 0 {
		return nil
	}
	s := p.services[app]
	delete(p.services, app)
	p.buildSites()
	return s
}

// newListener serves ln: an app's own port (owner), or a shared port
// (shared), the HTTPS one when isTLS is set. p.mu is held.
func (p *Proxy) newListener(port int, ln net.Listener, owner *Service, shared, isTLS bool) *listener {
	l := &listener{p: p, port: port, tls: isTLS, ln: ln, handoff: newHandoff(ln.Addr())}
	if isTLS {
		l.tlsConf = p.tlsConfig()
	}
	l.shared.Store(shared)
	errorLog := p.errorLog
	if owner != nil {
		l.owner.Store(owner)
		errorLog = owner.errorLog
	}
	l.server = httpdrain.New(&http.Server{
		Handler:           l,
		ReadHeaderTimeout: p.opts.HeaderTimeout,
		IdleTimeout:       p.opts.IdleTimeout,
		// net/http reads 4 KiB past MaxHeaderBytes (bufio's slop)
		// before it answers 431: this makes MaxHeaderBytes the bound of
		// a head on a new connection, as on the fast path. (A head that
		// follows another in one read may overrun it by what net/http
		// had read ahead, at most 4 KiB.)
		MaxHeaderBytes: p.opts.MaxHeaderBytes - 4096,
		ErrorLog:       errorLog,
		ConnContext:    handedTLS,
	})
	p.ports[port] = l
	go l.server.Serve(l.handoff)
	go l.acceptLoop(p.log)
	return l
}

// Listen opens port for app. Until the app has targets, requests get 503.
// Listening again on a port the app already has is a no-op. The shared
// HTTP port may also be an app's own port: that app then answers the
// hosts no domain claims there.
func (p *Proxy) Listen(app string, port int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, open := p.ports[port]
	if open {
		had := l.owner.Load() != nil
		if err := p.own(l, app); err != nil {
			return err
		}
		return p.shareForDefault(app, func() {
			if !had {
				l.owner.Store(nil)
			}
		})
	}
	addr := net.JoinHostPort(p.opts.BindAddress, strconv.Itoa(port))
	ln, err := p.listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("%w: another program on this host listens on %s (stop it or choose another --port)", ErrPortInUse, addr)
		}
		if errors.Is(err, syscall.EACCES) {
			return fmt.Errorf("cannot listen on %s: ports below 1024 need root or CAP_NET_BIND_SERVICE: %w", addr, err)
		}
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	l = p.newListener(port, ln, p.service(app), false, false)
	p.log.Info("proxy listening", "app", app, "addr", ln.Addr().String())
	return p.shareForDefault(app, func() {
		delete(p.ports, port)
		l.close(0)
	})
}

// shareForDefault opens the shared ports when app is the default app,
// which answers there for the hosts no domain claims; when they cannot
// open, undo takes back what Listen did, and the error says why. p.mu is
// held.
func (p *Proxy) shareForDefault(app string, undo func()) error {
	if app != p.opts.DefaultApp {
		return nil
	}
	if err := p.share(false); err != nil {
		undo()
		p.dropService(app).retire(0)
		return err
	}
	return nil
}

// own makes the open port l app's own, when it may be. p.mu is held.
func (p *Proxy) own(l *listener, app string) error {
	owner := l.owner.Load()
	switch {
	case owner != nil && owner.app == app:
		return nil
	case owner != nil:
		return fmt.Errorf("%w: port %d already serves app %s (choose another with --port)", ErrPortInUse, l.port, owner.app)
	case l.tls:
		return fmt.Errorf("%w: port %d is the agent's shared HTTPS port (proxy.https_port): choose another --port, or serve %s by domain (--domain)", ErrPortInUse, l.port, app)
	case p.opts.DefaultApp != "" && p.opts.DefaultApp != app:
		return fmt.Errorf("%w: port %d is the agent's shared HTTP port (proxy.http_port), whose unclaimed hosts go to proxy.default_app %s: choose another --port, or serve %s by domain (--domain)", ErrPortInUse, l.port, p.opts.DefaultApp, app)
	}
	l.owner.Store(p.service(app))
	p.log.Info("proxy listening", "app", app, "addr", l.ln.Addr().String(), "shared", true)
	return nil
}

// Close stops listening on port, letting requests in flight finish within
// grace. It does not wait. When it was the app's last port, the app's
// routing state goes with it: a later Listen starts with no targets. A
// shared port stays open, without its owner.
func (p *Proxy) Close(port int, grace time.Duration) {
	p.mu.Lock()
	l, ok := p.ports[port]
	var gone *Service
	if ok {
		app := l.app()
		if l.shared.Load() {
			l.owner.Store(nil)
			ok = false // nothing to close
		} else {
			delete(p.ports, port)
		}
		if app != "" {
			gone = p.dropService(app)
		}
	}
	ls := p.unshare()
	p.mu.Unlock()
	if ok {
		ls = append(ls, l)
	}
	for _, l := range ls {
		l.close(grace)
	}
	gone.retire(grace)
}

// Remove forgets app: it closes all of its ports and takes its domains
// off the shared ones, letting requests in flight finish within grace,
// and drops its targets. It does not wait.
func (p *Proxy) Remove(app string, grace time.Duration) {
	p.mu.Lock()
	var ls []*listener
	for port, l := range p.ports {
		if l.app() != app {
			continue
		}
		if l.shared.Load() {
			l.owner.Store(nil)
			continue
		}
		ls = append(ls, l)
		delete(p.ports, port)
	}
	delete(p.domains, app)
	s := p.services[app]
	delete(p.services, app)
	p.buildSites()
	ls = append(ls, p.unshare()...)
	p.mu.Unlock()
	for _, l := range ls {
		l.close(grace)
	}
	s.retire(grace)
}

// listening tells whether app still has a port of its own. p.mu is held.
func (p *Proxy) listening(app string) bool {
	for _, l := range p.ports {
		if l.app() == app {
			return true
		}
	}
	return false
}

// close frees the port at once and lets its connections drain within
// grace, in the background.
func (l *listener) close(grace time.Duration) {
	l.ln.Close()
	l.closing.Store(true)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		l.shutdown(ctx)
	}()
}

// retire drains the targets of a service that no port reaches any more,
// in the background, so that their connections are closed.
func (s *Service) retire(grace time.Duration) {
	if s == nil {
		return
	}
	s.removed.Store(true)
	r := s.install(&routes{}) // requests waiting for a first version see the removal now
	if r == nil || len(r.all) == 0 {
		return
	}
	go (&Retired{targets: r.targets()}).Drain(context.Background(), grace, grace)
}

// Retired is a target set that a swap took out of service.
type Retired struct {
	targets []*Target
}

// Addrs lists the retired targets' addresses.
func (r *Retired) Addrs() []string {
	if r == nil {
		return nil
	}
	out := make([]string, len(r.targets))
	for i, t := range r.targets {
		out[i] = t.addr
	}
	return out
}

// Drain waits for the retired targets' requests to finish, up to timeout
// (streamGrace for websockets and event streams), then cuts the rest.
// When Drain returns, no request reaches the retired containers any more.
func (r *Retired) Drain(ctx context.Context, timeout, streamGrace time.Duration) DrainStats {
	var total DrainStats
	if r == nil {
		return total
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, t := range r.targets {
		wg.Go(func() {
			st := t.drain(ctx, timeout, streamGrace)
			mu.Lock()
			total.Cut += st.Cut
			total.Waited = max(total.Waited, st.Waited)
			mu.Unlock()
		})
	}
	wg.Wait()
	return total
}

// Route installs app's set of backends at once and returns the targets it
// no longer routes to, for the caller to drain. Targets whose Addr
// survives keep their connections, their requests in flight and their
// health. split, when not nil, gives each version its share of new
// requests in percent (e.g. {"v1": 90, "v2": 10}); the shares must add up
// to 100, each version in split must have at least one backend, and
// backends of a version split leaves out take requests only when no other
// can. With split nil, requests spread over all backends alike. An error
// (ErrBadRoute) leaves the app's routes as they were.
func (p *Proxy) Route(app string, backends []Backend, split map[string]int) (*Retired, error) {
	p.mu.Lock()
	s := p.service(app)
	p.mu.Unlock()

	s.routing.Lock()
	defer s.routing.Unlock()
	keep := map[string]*Target{}
	if old := s.routes.Load(); old != nil {
		for _, m := range old.all {
			keep[m.t.addr] = m.t
		}
	}
	next, err := newRoutes(backends, split, keep)
	if err != nil {
		return nil, err
	}
	s.install(next)
	for _, m := range next.all {
		delete(keep, m.t.addr)
	}
	r := &Retired{}
	for _, t := range keep {
		r.targets = append(r.targets, t)
	}
	return r, nil
}

// Swap routes app to the targets at addrs, at once, and returns the set it
// replaced for the caller to drain: Route with no version and no split.
// An address listed twice is routed once.
func (p *Proxy) Swap(app string, addrs []string) *Retired {
	backends := make([]Backend, 0, len(addrs))
	for _, a := range addrs {
		if !slices.ContainsFunc(backends, func(b Backend) bool { return b.Addr == a }) {
			backends = append(backends, Backend{Addr: a})
		}
	}
	r, err := p.Route(app, backends, nil)
	if err != nil {
		panic("proxy: Route refused distinct backends without a split: " + err.Error())
	}
	return r
}

// Backends returns the backends app is routed to now.
func (p *Proxy) Backends(app string) []Backend {
	if r := p.routesOf(app); r != nil {
		return r.backends()
	}
	return nil
}

// Targets returns the addresses app is routed to now.
func (p *Proxy) Targets(app string) []string {
	r := p.routesOf(app)
	if r == nil {
		return nil
	}
	return (&Retired{targets: r.targets()}).Addrs()
}

// InRotation lists the addresses of app's targets that take requests:
// neither marked down (SetHealthy) nor ejected after refusing a
// connection.
func (p *Proxy) InRotation(app string) []string {
	r := p.routesOf(app)
	if r == nil {
		return nil
	}
	var out []string
	for _, t := range r.targets() {
		if t.inRotation() {
			out = append(out, t.addr)
		}
	}
	return out
}

// SetHealthy records what the agent's active health check of app's
// target at addr found: a target marked down takes no new requests until
// it is marked up (which also ends a passive ejection). When no target of
// the app takes requests, one is tried anyway. Unknown apps and addresses
// are ignored.
func (p *Proxy) SetHealthy(app, addr string, ok bool) {
	p.mu.Lock()
	s := p.services[app]
	p.mu.Unlock()
	if s == nil {
		return
	}
	r := s.routes.Load()
	if r == nil {
		return
	}
	m, found := r.find(addr)
	if !found || !m.t.setHealthy(ok) {
		return
	}
	msg := "target marked unhealthy"
	if ok {
		msg = "target marked healthy"
	}
	s.log.LogAttrs(context.Background(), slog.LevelInfo, msg, slog.String("target", addr), slog.String("version", m.version))
}

// routesOf returns app's installed routes, or nil.
func (p *Proxy) routesOf(app string) *routes {
	p.mu.Lock()
	s, ok := p.services[app]
	p.mu.Unlock()
	if !ok {
		return nil
	}
	return s.routes.Load()
}

// Shutdown closes every listener, letting requests finish within ctx.
func (p *Proxy) Shutdown(ctx context.Context) {
	p.mu.Lock()
	ls := make([]*listener, 0, len(p.ports))
	for port, l := range p.ports {
		ls = append(ls, l)
		delete(p.ports, port)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, l := range ls {
		wg.Go(func() { l.shutdown(ctx) })
	}
	wg.Wait()
}

// Observers returns one observer that tells each of obs.
func Observers(obs ...Observer) Observer { return multiObserver(obs) }

type multiObserver []Observer

func (m multiObserver) App(app string) AppObserver {
	out := make(multiAppObserver, len(m))
	for i, o := range m {
		out[i] = o.App(app)
	}
	return out
}

type multiAppObserver []AppObserver

func (m multiAppObserver) Start() {
	for _, o := range m {
		o.Start()
	}
}

func (m multiAppObserver) Done(version, method string, status int, took time.Duration, bytes int64) {
	for _, o := range m {
		o.Done(version, method, status, took, bytes)
	}
}

func (m multiAppObserver) UpstreamError(version, kind string) {
	for _, o := range m {
		o.UpstreamError(version, kind)
	}
}
