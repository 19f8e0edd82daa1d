package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The shared ports. An app with domains is served on the agent's shared
// HTTP and HTTPS ports (Options.HTTPPort and HTTPSPort) instead of a port
// of its own: each request goes to the app whose domain its Host names
// (siteTable). The HTTPS port opens only with Options.Certificates, which
// chooses each connection's certificate by SNI. The handshake is done
// here; then a connection that chose HTTP/1.1 goes through the fast path
// as a plain one does (and to net/http for anything unusual), and one that
// chose HTTP/2 to net/http. The shared ports open when the first
// app gets domains (or the default app comes) and close when the last
// one goes, so that an agent without domains opens nothing more.

// Certificates gives the proxy's TLS listener its certificates and answers
// ACME HTTP-01 challenges on the shared HTTP port.
type Certificates interface {
	// GetCertificate is tls.Config.GetCertificate: SNI → certificate, including
	// ACME TLS-ALPN-01 challenge certificates (hello.SupportedProtos has "acme-tls/1").
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// HandleHTTPChallenge answers r when it is an ACME HTTP-01 challenge and reports whether it did.
	HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool
	// Covers reports whether a certificate for host is available now (redirect to HTTPS only then).
	Covers(host string) bool
}

// ACMETLS1 is the ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC
// 8737): a connection that negotiated it only wanted the challenge
// certificate, and is closed after the handshake.
const ACMETLS1 = "acme-tls/1"

// acmeChallengePrefix starts the path of every ACME HTTP-01 challenge.
const acmeChallengePrefix = "/.well-known/acme-challenge/"

// Domains are the host names an app is served by on the shared ports, and
// how.
type Domains struct {
	// Names are host names in lower case (IDNA's ASCII form), each
	// exact or a "*." wildcard of one label; a name is one app's only.
	Names []string
	// NoRedirect keeps plain HTTP requests on HTTP even when a
	// certificate covers their host (by default they get 308 to HTTPS).
	NoRedirect bool
	// HSTSMaxAge, when positive, sends Strict-Transport-Security with
	// this max-age, in seconds, on HTTPS responses that have none.
	HSTSMaxAge int
}

// ErrDomainTaken means a domain is another app's.
var ErrDomainTaken = errors.New("domain taken")

// SetDomains makes app served on the shared ports by d's names, at once,
// replacing its earlier ones; no names takes it off them. The shared ports
// open with the first app that has domains, and close, within grace, when
// none has any more. A name another app has, or a shared port that cannot
// open, is an error that changes nothing.
func (p *Proxy) SetDomains(app string, d Domains, grace time.Duration) error {
	p.mu.Lock()
	for other, od := range p.domains {
		if other == app {
			continue
		}
		for _, name := range d.Names {
			if slices.Contains(od.Names, name) {
				p.mu.Unlock()
				return fmt.Errorf("%w: %s is served by app %s", ErrDomainTaken, name, other)
			}
		}
	}
	prev, had := p.domains[app]
	if len(d.Names) == 0 {
		delete(p.domains, app)
	} else {
		d.Names = slices.Clone(d.Names)
		p.domains[app] = d
		p.service(app)
	}
	if err := p.share(false); err != nil {
		if had {
			p.domains[app] = prev
		} else {
			delete(p.domains, app)
		}
		gone := p.dropService(app)
		p.mu.Unlock()
		gone.retire(grace)
		return err
	}
	p.buildSites()
	gone := p.dropService(app)
	ls := p.unshare()
	p.mu.Unlock()
	for _, l := range ls {
		l.close(grace)
	}
	gone.retire(grace)
	return nil
}

// DomainsOf returns the domains app is served by now.
func (p *Proxy) DomainsOf(app string) Domains {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.domains[app]
	d.Names = slices.Clone(d.Names)
	return d
}

// buildSites makes the table the shared ports route by from the apps'
// domains and services, and swaps it in. p.mu is held.
func (p *Proxy) buildSites() {
	t := &siteTable{exact: map[string]*site{}, wild: map[string]*site{}}
	siteOf := func(app string) *site {
		s := p.services[app]
		if s == nil {
			return nil
		}
		d := p.domains[app]
		return &site{svc: s, redirect: !d.NoRedirect, hsts: hstsValue(d.HSTSMaxAge)}
	}
	for app, d := range p.domains {
		st := siteOf(app)
		if st == nil {
			continue
		}
		for _, name := range d.Names {
			if parent, ok := strings.CutPrefix(name, "*."); ok {
				t.wild[parent] = st
			} else {
				t.exact[name] = st
			}
		}
	}
	if p.opts.DefaultApp != "" {
		t.fallback = siteOf(p.opts.DefaultApp)
	}
	p.sites.Store(t)
}

// wantShared tells whether the shared ports must be open: an app has
// domains, or the default app is served. p.mu is held.
func (p *Proxy) wantShared() bool {
	for _, d := range p.domains {
		if len(d.Names) > 0 {
			return true
		}
	}
	return p.opts.DefaultApp != "" && p.services[p.opts.DefaultApp] != nil
}

// share opens the shared ports, when they are wanted (or force) and not
// open yet: the HTTP one, and the HTTPS one when there are certificates.
// An app's own port that is the HTTP port becomes shared too (its app
// then answers the hosts no domain claims). Either both open or neither.
// p.mu is held.
func (p *Proxy) share(force bool) error {
	if !force && !p.wantShared() {
		return nil
	}
	httpL := p.ports[p.opts.HTTPPort]
	if httpL != nil && !httpL.shared.Load() {
		if owner, def := httpL.app(), p.opts.DefaultApp; def != "" && owner != def {
			return fmt.Errorf("%w: cannot serve apps by domain on port %d (proxy.http_port): app %s has it as its own port, and the hosts no domain claims there go to proxy.default_app %s; give %s a domain or another --port", ErrPortInUse, p.opts.HTTPPort, owner, def, owner)
		}
	}
	var httpsL *listener
	if p.opts.Certificates != nil {
		httpsL = p.ports[p.opts.HTTPSPort]
		if httpsL != nil && !httpsL.tls {
			return fmt.Errorf("%w: cannot serve apps by domain on port %d (proxy.https_port): app %s has it as its own, plain HTTP, port; give %s a domain or another --port", ErrPortInUse, p.opts.HTTPSPort, httpsL.app(), httpsL.app())
		}
	}
	var opened net.Listener
	if httpL == nil {
		ln, err := p.openShared(p.opts.HTTPPort, "proxy.http_port")
		if err != nil {
			return err
		}
		opened = ln
	}
	if p.opts.Certificates != nil && httpsL == nil {
		ln, err := p.openShared(p.opts.HTTPSPort, "proxy.https_port")
		if err != nil {
			if opened != nil {
				opened.Close()
			}
			return err
		}
		p.newListener(p.opts.HTTPSPort, ln, nil, true, true)
		p.log.Info("proxy listening", "addr", ln.Addr().String(), "shared", "https")
	}
	if opened != nil {
		p.newListener(p.opts.HTTPPort, opened, nil, true, false)
		p.log.Info("proxy listening", "addr", opened.Addr().String(), "shared", "http")
	} else {
		httpL.shared.Store(true)
	}
	return nil
}

// unshare takes the shared ports back once nothing wants them, and
// returns the listeners to close; an owner keeps the HTTP port as its
// own. p.mu is held.
func (p *Proxy) unshare() []*listener {
	if p.wantShared() {
		return nil
	}
	var out []*listener
	for _, port := range []int{p.opts.HTTPPort, p.opts.HTTPSPort} {
		l := p.ports[port]
		if l == nil || !l.shared.Load() {
			continue
		}
		if l.owner.Load() != nil {
			l.shared.Store(false)
			continue
		}
		delete(p.ports, port)
		out = append(out, l)
	}
	return out
}

// listen opens a listening socket, through Options.Listen when set.
// Every listener of the proxy is opened here, apps' own ports and the
// shared ones, so that an agent upgrade hands them all, open, to the new
// agent process.
func (p *Proxy) listen(network, addr string) (net.Listener, error) {
	if p.opts.Listen != nil {
		return p.opts.Listen(network, addr)
	}
	return net.Listen(network, addr)
}

// openShared opens a shared port, named by its config key in errors.
func (p *Proxy) openShared(port int, key string) (net.Listener, error) {
	addr := net.JoinHostPort(p.opts.BindAddress, strconv.Itoa(port))
	ln, err := p.listen("tcp", addr)
	switch {
	case err == nil:
		return ln, nil
	case errors.Is(err, syscall.EADDRINUSE):
		return nil, fmt.Errorf("%w: cannot serve apps by domain: another program on this host listens on %s (%s): stop it, or set %s to another port", ErrPortInUse, addr, key, key)
	case errors.Is(err, syscall.EACCES):
		return nil, fmt.Errorf("cannot serve apps by domain on %s (%s): ports below 1024 need root or CAP_NET_BIND_SERVICE (run the agent as root, `setcap cap_net_bind_service=+ep` its binary, or set %s above 1023): %w", addr, key, key, err)
	}
	return nil, fmt.Errorf("cannot serve apps by domain: listen on %s (%s): %w", addr, key, err)
}

// tlsConfig is the shared HTTPS port's: TLS 1.2 at least, Go's default
// cipher suites, HTTP/2 first, and ACME's TLS-ALPN-01 challenge. Each
// listener makes one and keeps it: its session ticket keys live there,
// so that a client coming back resumes its session (an abbreviated
// handshake) instead of a full one.
func (p *Proxy) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1", ACMETLS1},
		GetCertificate: p.getCertificate,
	}
}

// getCertificate asks Options.Certificates for the certificate of a
// connection's SNI name, in the form the shared ports route by.
func (p *Proxy) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if name := hostKey(hello.ServerName); name != hello.ServerName {
		h := *hello
		h.ServerName = name
		hello = &h
	}
	return p.opts.Certificates.GetCertificate(hello)
}

// handshake runs the TLS handshake of a connection to the shared HTTPS
// port, within the header timeout, and serves it as negotiated: HTTP/1.1
// (or no ALPN) on the fast path, as a plain connection, HTTP/2 by
// net/http. An ACME TLS-ALPN-01 connection is closed: its handshake was
// all it wanted.
func (l *listener) handshake(c net.Conn, st *connState) {
	// A connection accepted as the listener closes (an upgrade's old
	// agent) is served all the same: its requests are answered with
	// "Connection: close".
	st.busy()
	tc := tls.Server(c, l.tlsConf)
	c.SetDeadline(time.Now().Add(l.p.opts.HeaderTimeout))
	if err := tc.Handshake(); err != nil {
		l.conns.Delete(c)
		l.p.errorLog.Printf("TLS handshake from %s: %v", c.RemoteAddr(), err)
		c.Close()
		return
	}
	c.SetDeadline(time.Time{})
	switch tc.ConnectionState().NegotiatedProtocol {
	case ACMETLS1:
		l.conns.Delete(c)
		tc.Close()
	case "h2":
		// Given first: a drain that saw no connection here might close
		// the handoff before it has this one.
		l.handoff.give(tc)
		l.conns.Delete(c)
	default:
		// The fast path tracks the connection as tc from now on: a
		// shutdown closing it sends the client TLS's close_notify.
		l.conns.Store(tc, st)
		l.conns.Delete(c)
		st.idle()
		l.serveConn(tc, st)
	}
}

// route chooses the app of a request by its host: the owner of an own
// port; on a shared port the app whose domain host names, else the port's
// owner, else the default app. It returns the site when the app is served
// by domain there, and the name host was routed by. No service means no
// app: 404.
func (l *listener) route(host string) (*Service, *site, string) {
	if !l.shared.Load() {
		return l.owner.Load(), nil, ""
	}
	t := l.p.sites.Load()
	st, name := t.lookup(host)
	if st != nil {
		return st.svc, st, name
	}
	if o := l.owner.Load(); o != nil {
		return o, nil, name
	}
	if t.fallback != nil {
		return t.fallback.svc, t.fallback, name
	}
	return nil, nil, name
}

// dispatch serves one request that either client side read on l: it
// chooses the app (route), redirects plain HTTP to HTTPS when the app
// wants it and a certificate covers the host, and forwards. It returns
// whether the client's connection may carry another request.
func (l *listener) dispatch(ctx context.Context, req *request, c client) bool {
	if req.host == "" && req.sni != "" {
		req.host = req.sni // HTTP/1.0 over TLS: the SNI names the host
	}
	s, st, name := l.route(req.host)
	if s == nil {
		l.p.reply(req, c, http.StatusNotFound, "", "no app is served by this host name")
		return req.length == 0
	}
	if st != nil {
		certs := l.p.opts.Certificates
		if !req.https && st.redirect && certs != nil && certs.Covers(name) {
			loc := "https://" + name
			if port := l.p.opts.HTTPSPort; port != DefaultHTTPSPort {
				loc += ":" + strconv.Itoa(port)
			}
			loc += req.uri
			l.p.reply(req, c, http.StatusPermanentRedirect, "Location: "+loc+"\r\n", loc)
			return req.length == 0
		}
		if req.https {
			req.hsts = st.hsts
		}
	}
	return s.serve(ctx, req, c)
}

// reply answers a request of the shared ports that no app takes, and logs
// it in the access log.
func (p *Proxy) reply(req *request, c client, status int, fields, msg string) {
	c.reply(status, fields, errorBody("", status, msg))
	if p.opts.AccessLog {
		accessLog(p.opts.AccessLogOutput, p.log, "", req, status, 0, "", time.Now())
	}
}

// ServeHTTP forwards one request read by net/http: the fast path's
// handovers (over TLS too), and the HTTPS port's HTTP/2 requests. ACME
// HTTP-01 challenges of the shared HTTP port are answered first.
func (l *listener) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil {
		r.TLS = handedTLSState(r.Context())
	}
	if l.challenge(r.URL.Path) && l.p.opts.Certificates.HandleHTTPChallenge(w, r) {
		return
	}
	serveHTTP(w, r, l.p.opts.MaxBodyBytes, l.dispatch)
}

// challenge tells whether a request the fast path read must go to net/http
// for Options.Certificates to answer it: an ACME HTTP-01 challenge on the
// shared HTTP port.
func (l *listener) challenge(uri string) bool {
	return l.p.opts.Certificates != nil && !l.tls && strings.HasPrefix(uri, acmeChallengePrefix) && l.shared.Load()
}
