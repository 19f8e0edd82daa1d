package certs

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"github.com/sprout-paas/sprout/source"
)

// DefaultDirectory is Let's Encrypt's production ACME directory.
const DefaultDirectory = certmagic.LetsEncryptProductionCA

// acmeManager obtains and renews certificates through certmagic: one
// Config with its own cache (renewals, OCSP staples, ARI), one ACME
// issuer, and a goroutine per wanted domain until its certificate is in
// hand, retrying failures with back-off. Renewals are certmagic's
// maintenance loop's; their failures reach it as events.
type acmeManager struct {
	log        *slog.Logger
	cache      *certmagic.Cache
	cfg        *certmagic.Config
	issuer     *certmagic.ACMEIssuer
	ctx        context.Context
	cancel     context.CancelFunc
	first, max time.Duration
	renewCheck time.Duration
	wg         sync.WaitGroup
	closeOnce  sync.Once
	hooks      *hooks
	// challenges are the addresses where the proxy answers the CA's
	// challenges, by config key, for the challenge types on.
	challenges []challengeAddr

	mu      sync.Mutex
	domains map[string]*domainState
}

// domainState is what is known of one domain asked of the CA.
type domainState struct {
	cancel      context.CancelFunc
	err         string
	nextRetry   time.Time
	lastRenewal time.Time
}

// challengeAddr is where the proxy answers one challenge type.
type challengeAddr struct {
	addr, key    string // host:port, and the config key of its port
	port, caPort int    // the proxy's port, and the one the CA validates on
}

// challengeAddrs are where the proxy answers the challenge types on.
func challengeAddrs(opts Options) []challengeAddr {
	var out []challengeAddr
	if !opts.DisableHTTP01 {
		out = append(out, challengeAddr{addr: net.JoinHostPort(opts.ListenHost, strconv.Itoa(opts.HTTPPort)), key: "proxy.http_port", port: opts.HTTPPort, caPort: DefaultHTTPPort})
	}
	if !opts.DisableTLSALPN01 {
		out = append(out, challengeAddr{addr: net.JoinHostPort(opts.ListenHost, strconv.Itoa(opts.TLSPort)), key: "proxy.https_port", port: opts.TLSPort, caPort: DefaultTLSPort})
	}
	return out
}

func newACME(opts Options, log *slog.Logger, h *hooks) (*acmeManager, error) {
	storage, err := openStorage(opts, log)
	if err != nil {
		return nil, err
	}
	roots, err := trustedRoots(opts.CARoot)
	if err != nil {
		return nil, err
	}
	zl := zapToSlog(log)
	ctx, cancel := context.WithCancel(context.Background())
	a := &acmeManager{
		log: log, ctx: ctx, cancel: cancel, domains: map[string]*domainState{},
		first: cmp.Or(opts.FirstRetry, DefaultFirstRetry), max: cmp.Or(opts.MaxRetry, DefaultMaxRetry),
		renewCheck: cmp.Or(opts.RenewCheckInterval, certmagic.DefaultRenewCheckInterval),
		hooks:      h, challenges: challengeAddrs(opts),
	}
	a.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return a.cfg, nil },
		RenewCheckInterval: a.renewCheck,
		OCSPCheckInterval:  opts.RenewCheckInterval,
		Logger:             zl,
	})
	a.cfg = certmagic.New(a.cache, certmagic.Config{Storage: storage, Logger: zl, OnEvent: a.onEvent})
	a.issuer = certmagic.NewACMEIssuer(a.cfg, certmagic.ACMEIssuer{
		CA:     cmp.Or(opts.Directory, DefaultDirectory),
		Email:  opts.Email,
		Agreed: true, // setting tls.acme.email accepts the CA's terms
		// The proxy answers the challenges on its own ports, through
		// GetCertificate and HandleHTTPChallenge. certmagic's solvers
		// try to listen on ListenHost:Alt*Port and, finding the proxy
		// there, leave it be; where nothing listens they would listen
		// themselves, which onEvent prevents (cert_obtaining).
		ListenHost: opts.ListenHost, AltHTTPPort: opts.HTTPPort, AltTLSALPNPort: opts.TLSPort,
		DisableHTTPChallenge: opts.DisableHTTP01, DisableTLSALPNChallenge: opts.DisableTLSALPN01,
		TrustedRoots: roots,
		Logger:       zl,
	})
	a.cfg.Issuers = []certmagic.Issuer{a.issuer}
	return a, nil
}

// openStorage is where ACME's certificates and account keys live: the
// data dir (owner-only), or an S3 prefix the environment's hosts share.
func openStorage(opts Options, log *slog.Logger) (certmagic.Storage, error) {
	if opts.Storage == "" {
		dir := filepath.Join(opts.DataDir, "tls", "acme")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("certificates dir: %w", err)
		}
		return &certmagic.FileStorage{Path: dir}, nil
	}
	s3, err := source.NewS3(context.Background(), opts.S3)
	if err != nil {
		return nil, fmt.Errorf("tls.storage: %w", err)
	}
	return NewS3Storage(s3, opts.Storage, log.With("storage", opts.Storage))
}

// trustedRoots is the system's roots plus those in the file caRoot.
func trustedRoots(caRoot string) (*x509.CertPool, error) {
	if caRoot == "" {
		return nil, nil // certmagic then trusts the system's
	}
	pem, err := os.ReadFile(caRoot)
	if err != nil {
		return nil, fmt.Errorf("tls.acme.ca_root: %v", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls.acme.ca_root: %s holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the root of the CA that serves tls.acme.directory", caRoot)
	}
	return pool, nil
}

// manage starts obtaining the domains in want that are not yet asked for,
// and stops asking for the others (their certificates leave the cache).
// Certificates leave the cache under a.mu, so that a domain dropped and
// asked for again never loses the certificate its new keep cached.
func (a *acmeManager) manage(want []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var dropped []certmagic.SubjectIssuer
	for d, st := range a.domains {
		if !slices.Contains(want, d) {
			st.cancel()
			delete(a.domains, d)
			dropped = append(dropped, certmagic.SubjectIssuer{Subject: d})
		}
	}
	for _, d := range want {
		if a.domains[d] != nil {
			continue
		}
		ctx, cancel := context.WithCancel(a.ctx)
		st := &domainState{cancel: cancel}
		a.domains[d] = st
		a.wg.Add(1)
		go a.keep(ctx, d, st)
	}
	a.cache.RemoveManaged(dropped) // takes only the cache's lock
}

// wanted lists the domains asked of the CA now.
func (a *acmeManager) wanted() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Sorted(maps.Keys(a.domains))
}

// keep gets domain's certificate into the cache, from storage (another
// host of the environment may have obtained it) or from the CA, retrying
// with back-off until it succeeds or the domain is no longer wanted. From
// then on certmagic's maintenance renews it.
func (a *acmeManager) keep(ctx context.Context, domain string, st *domainState) {
	defer a.wg.Done()
	for attempt := 0; ; attempt++ {
		err := a.cfg.ManageSync(ctx, []string{domain})
		if a.hooks.kept != nil {
			a.hooks.kept(domain)
		}
		if ctx.Err() != nil {
			a.forget(domain)
			return
		}
		if err == nil {
			a.mu.Lock()
			st.err, st.nextRetry = "", time.Time{}
			a.mu.Unlock()
			return
		}
		wait := min(a.first<<min(attempt, 20), a.max)
		msg := a.explain(domain, err)
		a.mu.Lock()
		st.err, st.nextRetry = msg, time.Now().Add(wait)
		a.mu.Unlock()
		a.log.Warn("no certificate obtained; the domain is served over HTTP meanwhile", "domain", domain, "error", msg, "attempt", attempt+1, "retry_in", wait.String())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// forget takes a dropped domain's certificate out of the cache, which
// its keep may have cached after manage dropped it; unless the domain is
// wanted again meanwhile, and the certificate is its new keep's.
func (a *acmeManager) forget(domain string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.domains[domain] == nil {
		a.cache.RemoveManaged([]certmagic.SubjectIssuer{{Subject: domain}})
	}
}

// onEvent follows certmagic's obtains and renewals: the obtain loop
// reports its own failures, renewals are reported here.
func (a *acmeManager) onEvent(_ context.Context, event string, data map[string]any) error {
	id, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	switch event {
	case "cert_obtaining":
		// Returning an error aborts this obtain or renewal, which is
		// retried later.
		return a.listening()
	case "cert_obtained":
		a.mu.Lock()
		if st := a.domains[id]; st != nil {
			st.lastRenewal, st.err, st.nextRetry = time.Now(), "", time.Time{}
		}
		a.mu.Unlock()
		what := "certificate obtained"
		if renewal {
			what = "certificate renewed"
		}
		a.log.Info(what, "domain", id, "ca", data["issuer"])
	case "cert_failed":
		if !renewal {
			return nil
		}
		err, _ := data["error"].(error)
		msg := a.explain(id, err)
		a.mu.Lock()
		if st := a.domains[id]; st != nil {
			st.err, st.nextRetry = msg, time.Now().Add(a.renewCheck)
		}
		a.mu.Unlock()
		a.log.Warn("certificate renewal failed; the current one is served until it expires, and renewal is retried", "domain", id, "error", msg)
	}
	return nil
}

// listening checks that the proxy listens where the CA's challenges
// arrive. certmagic's solvers listen there themselves when nothing does,
// which would take the proxy's ports from it; so no obtain or renewal
// starts until the proxy is there (the solvers then find the port taken
// and leave the answering to the proxy).
func (a *acmeManager) listening() error {
	for _, c := range a.challenges {
		conn, err := net.DialTimeout("tcp", c.addr, time.Second)
		if err != nil {
			return fmt.Errorf("the proxy does not listen on %s (%s) yet, where the CA's challenges arrive: not asking the CA until it does (it opens that port when an app has a domain)", c.addr, c.key)
		}
		conn.Close()
	}
	return nil
}

// current is the newest unexpired certificate for host in the cache.
func (a *acmeManager) current(host string) *certmagic.Certificate {
	c := a.newest(host)
	if c == nil || c.Expired() {
		return nil
	}
	return c
}

// newest is the certificate for host that expires last.
func (a *acmeManager) newest(host string) *certmagic.Certificate {
	var best *certmagic.Certificate
	for _, c := range a.cache.AllMatchingCertificates(host) {
		if c.Leaf == nil {
			continue
		}
		if best == nil || c.Leaf.NotAfter.After(best.Leaf.NotAfter) {
			best = &c
		}
	}
	return best
}

// list describes the domains asked of the CA.
func (a *acmeManager) list(now time.Time) []Info {
	a.mu.Lock()
	states := make(map[string]domainState, len(a.domains))
	for d, st := range a.domains {
		states[d] = *st
	}
	a.mu.Unlock()
	out := make([]Info, 0, len(states))
	for d, st := range states {
		i := Info{Name: d, Domains: []string{d}, Managed: true, Error: st.err, NextRetry: st.nextRetry, LastRenewal: st.lastRenewal}
		c := a.newest(d)
		if c != nil {
			i.Domains, i.Issuer = c.Leaf.DNSNames, issuerName(c.Leaf)
			i.NotBefore, i.NotAfter = c.Leaf.NotBefore, c.Leaf.NotAfter
			if i.LastRenewal.IsZero() {
				i.LastRenewal = c.Leaf.NotBefore
			}
		}
		switch {
		case c == nil && st.err != "":
			i.Status = StatusFailing
		case c == nil:
			i.Status = StatusObtaining
		case now.After(c.Leaf.NotAfter):
			i.Status = StatusExpired
		case st.err != "":
			i.Status = StatusFailing
		default:
			i.Status = StatusValid
		}
		out = append(out, i)
	}
	return out
}

func (a *acmeManager) close() {
	a.closeOnce.Do(func() {
		a.cancel()
		a.wg.Wait()
		a.cache.Stop()
	})
}

// issuerName names a certificate's CA: "Let's Encrypt R11".
func issuerName(leaf *x509.Certificate) string {
	name := leaf.Issuer.CommonName
	if len(leaf.Issuer.Organization) > 0 && !strings.Contains(name, leaf.Issuer.Organization[0]) {
		name = strings.TrimSpace(leaf.Issuer.Organization[0] + " " + name)
	}
	return name
}

// explain turns a failed issuance into one sentence: the CA's own words
// when it answered with a problem document, and what to check.
func (a *acmeManager) explain(domain string, err error) string {
	if err == nil {
		return "failed"
	}
	var p acme.Problem
	if !errors.As(err, &p) {
		return err.Error()
	}
	kind := p.Type[strings.LastIndex(p.Type, ":")+1:]
	msg := fmt.Sprintf("the CA said (%s): %s", kind, p.Detail)
	for _, sub := range p.Subproblems {
		msg += fmt.Sprintf("; %s: %s", sub.Identifier.Value, sub.Detail)
	}
	switch kind {
	case "connection", "dns", "unauthorized", "incorrectResponse", "tls":
		msg += fmt.Sprintf(" (check that %s resolves to this host and that %s)", domain, a.reachHint())
	case "caa":
		msg += fmt.Sprintf(" (a CAA record of %s forbids this CA: add one for it, or remove the record)", domain)
	case "rateLimited":
		msg += " (the CA's rate limit: Sprout tries again later; hosts of one environment share certificates with tls.storage)"
	case "rejectedIdentifier":
		msg += fmt.Sprintf(" (this CA does not issue for %s)", domain)
	}
	return msg
}

// reachHint says which ports must reach the proxy: the CA validates on
// 80 (HTTP-01) and 443 (TLS-ALPN-01), and the proxy's ports may be
// others, forwarded to.
func (a *acmeManager) reachHint() string {
	var ports, forwards []string
	for _, c := range a.challenges {
		ports = append(ports, strconv.Itoa(c.caPort))
		if c.port != c.caPort {
			forwards = append(forwards, fmt.Sprintf("%d to %d (%s)", c.caPort, c.port, c.key))
		}
	}
	if len(ports) == 0 {
		return "a challenge type is on"
	}
	what := "port " + ports[0] + " reaches"
	if len(ports) > 1 {
		what = "ports " + strings.Join(ports, " and ") + " reach"
	}
	if len(forwards) == 0 {
		return what + " its proxy"
	}
	return what + " its proxy, forwarded " + strings.Join(forwards, " and ")
}
