// Package certs gives the proxy its TLS certificates: ones you bring
// (served as they are, wildcards too) and ones it obtains and renews from
// an ACME CA (Let's Encrypt by default) through certmagic, answering the
// HTTP-01 and TLS-ALPN-01 challenges on the proxy's own ports.
package certs

import (
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/mail"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sprout-paas/sprout/source"
)

// Errors, for the API's status mapping.
var (
	// ErrInvalid: a certificate, key or setting that cannot be used; the
	// message says why and what to do.
	ErrInvalid = errors.New("invalid certificate")
	// ErrNotFound: no certificate of that name.
	ErrNotFound = errors.New("no such certificate")
)

// IssuerYours is the issuer shown for a certificate you brought.
const IssuerYours = "yours"

// Status words of a certificate in Info.
const (
	StatusValid     = "valid"     // served
	StatusObtaining = "obtaining" // asked of the CA; none yet
	StatusFailing   = "failing"   // the last attempt failed: see Error and NextRetry
	StatusExpired   = "expired"   // past its NotAfter
	StatusMissing   = "missing"   // wanted, and nothing can provide it
)

// Info describes one certificate, as `sprout certs` shows it.
type Info struct {
	// Name identifies it: its first domain (a wildcard's "*" written
	// _wildcard).
	Name    string   `json:"name"`
	Domains []string `json:"domains"`
	// Issuer is the CA that signed it, or "yours" for one you brought.
	Issuer string `json:"issuer,omitempty"`
	// Managed means ACME obtains and renews it; otherwise you do.
	Managed   bool      `json:"managed"`
	Status    string    `json:"status"`
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	// LastRenewal is when it was last obtained or renewed (for one you
	// brought: added).
	LastRenewal time.Time `json:"last_renewal,omitzero"`
	// Error is why the last attempt failed, with the CA's own words;
	// NextRetry when the next attempt is due (the earliest, for a
	// renewal).
	Error     string    `json:"error,omitempty"`
	NextRetry time.Time `json:"next_retry,omitzero"`
}

// Options configure a Manager.
type Options struct {
	// DataDir is the agent's data dir: certificates you bring live in
	// DataDir/tls/yours; ACME's, with the account key, in DataDir/tls/acme
	// unless Storage says otherwise. All owner-only.
	DataDir string
	// Email turns ACME on: the account's contact address at the CA. With
	// none, only certificates you bring are served.
	Email string
	// Directory is the ACME directory; "" is Let's Encrypt's production one.
	Directory string
	// CARoot is a PEM file of root certificates to trust, besides the
	// system's, for the ACME directory's HTTPS (a private CA).
	CARoot string
	// Storage is where ACME certificates, account keys and locks live: ""
	// for the data dir, or s3://bucket/prefix/ for every host of an
	// environment to share them, S3 saying how to reach it.
	Storage string
	S3      source.S3Options
	// ListenHost, HTTPPort and TLSPort are where the proxy listens and
	// answers the CA's challenges itself (proxy.bind_address,
	// proxy.http_port and proxy.https_port; 0 for 80 and 443). No
	// obtain or renewal starts while nothing listens there, so that
	// certmagic never binds those ports itself.
	ListenHost        string
	HTTPPort, TLSPort int
	// DisableHTTP01 and DisableTLSALPN01 turn a challenge type off.
	DisableHTTP01, DisableTLSALPN01 bool
	// FirstRetry is the wait after a failed issuance; it doubles after
	// each further failure, up to MaxRetry. Defaults: DefaultFirstRetry,
	// DefaultMaxRetry.
	FirstRetry, MaxRetry time.Duration
	// RenewCheckInterval is how often certificates are checked for
	// renewal and their OCSP staples refreshed; certmagic's default when 0.
	RenewCheckInterval time.Duration
}

// The ports the CA validates on (RFC 8555's HTTP-01, RFC 8737's
// TLS-ALPN-01), and the proxy's shared ports by default.
const (
	DefaultHTTPPort = 80
	DefaultTLSPort  = 443
)

// hooks stop a goroutine where ordering matters, for tests; all nil
// otherwise.
type hooks struct {
	changesBusy func()              // a change waits for the one under way
	applying    func(want []string) // reconcile computed want and applies it next
	kept        func(domain string) // a keep goroutine's ManageSync returned
}

// Retry defaults after a failed issuance: the CA's rate limits count
// failures, so attempts thin out quickly.
const (
	DefaultFirstRetry = time.Minute
	DefaultMaxRetry   = 6 * time.Hour
)

// Manager holds the certificates the proxy serves. It is safe for
// concurrent use; GetCertificate, HandleHTTPChallenge and Covers are the
// proxy's, Manage the agent's.
type Manager struct {
	opts     Options
	log      *slog.Logger
	yoursDir string
	acme     *acmeManager // nil with ACME off
	now      func() time.Time
	hooks    *hooks

	// changes serialises the changes of what is served and asked of the
	// CA (Manage, AddCertificate, RemoveCertificate), each from its
	// computing to its applying, so that an older set is never applied
	// after a newer one. Take it before mu; handshakes take only mu.
	changes sync.Mutex

	mu    sync.Mutex
	yours map[string]*yourCert
	// asked is every domain the apps want a certificate for (Manage).
	asked []string
}

// New returns a Manager serving the certificates you brought (read from
// the data dir) and, with opts.Email, obtaining the ones Manage asks for.
func New(opts Options, log *slog.Logger) (*Manager, error) {
	if opts.DataDir == "" {
		return nil, fmt.Errorf("%w: no data dir", ErrInvalid)
	}
	opts.HTTPPort, opts.TLSPort = cmp.Or(opts.HTTPPort, DefaultHTTPPort), cmp.Or(opts.TLSPort, DefaultTLSPort)
	m := &Manager{opts: opts, log: log, yoursDir: filepath.Join(opts.DataDir, "tls", "yours"), now: time.Now, hooks: &hooks{}}
	if err := os.MkdirAll(m.yoursDir, 0o700); err != nil {
		return nil, fmt.Errorf("certificates dir: %w", err)
	}
	yours, err := loadYours(m.yoursDir, m.now(), log)
	if err != nil {
		return nil, fmt.Errorf("read your certificates in %s: %w", m.yoursDir, err)
	}
	for _, y := range yours {
		if y.err != "" {
			log.Error("a certificate of yours is not served", "name", y.name, "error", y.err)
		}
	}
	m.yours = yours
	if opts.Email != "" {
		if m.acme, err = newACME(opts, log, m.hooks); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Close stops obtaining and renewing; certificates in hand are still
// served.
func (m *Manager) Close() {
	if m.acme != nil {
		m.acme.close()
	}
}

// Manage sets the domains the apps want certificates for, whenever that
// set changes. It returns at once: certificates are obtained and renewed
// in the background, each failure retried with back-off. A domain one of
// your certificates covers is not asked of the CA.
func (m *Manager) Manage(domains []string) {
	var asked []string
	for _, d := range domains {
		if d = normalize(d); d != "" && !slices.Contains(asked, d) {
			asked = append(asked, d)
		}
	}
	slices.Sort(asked)
	m.lockChanges()
	defer m.changes.Unlock()
	m.mu.Lock()
	m.asked = asked
	m.mu.Unlock()
	m.reconcile()
}

// lockChanges takes m.changes, waiting for a change under way to be
// applied first.
func (m *Manager) lockChanges() {
	if m.changes.TryLock() {
		return
	}
	if m.hooks.changesBusy != nil {
		m.hooks.changesBusy()
	}
	m.changes.Lock()
}

// reconcile asks ACME for the wanted domains that none of your
// certificates covers, and stops asking for the others. Hold m.changes:
// the set computed is applied before another is computed.
func (m *Manager) reconcile() {
	if m.acme == nil {
		return
	}
	m.mu.Lock()
	var want []string
	for _, d := range m.asked {
		if m.yoursFor(d) == nil && m.unobtainable(d) == "" {
			want = append(want, d)
		}
	}
	m.mu.Unlock()
	if m.hooks.applying != nil {
		m.hooks.applying(want)
	}
	m.acme.manage(want) // it never calls back into m
}

// unobtainable says why ACME is not asked for domain, or "".
func (m *Manager) unobtainable(domain string) string {
	switch {
	case m.acme == nil:
		return "no certificate: ACME is off (set tls.acme.email in the agent's config) and none of yours covers " + domain + " (sprout certs add)"
	case strings.HasPrefix(domain, "*."):
		return "no certificate: a wildcard needs one of yours (sprout certs add); the HTTP-01 and TLS-ALPN-01 challenges cannot prove one to a CA"
	}
	return ""
}

// GetCertificate picks the certificate for a TLS handshake: the CA's
// TLS-ALPN-01 challenge first, then one of yours that covers the name
// (an exact name before a wildcard), then ACME's.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if m.acme != nil && isALPNChallenge(hello) {
		return m.acme.cfg.GetCertificate(hello)
	}
	name := normalize(hello.ServerName)
	m.mu.Lock()
	y := m.yoursFor(name)
	m.mu.Unlock()
	if y != nil {
		return &y.pair, nil
	}
	if m.acme != nil {
		return m.acme.cfg.GetCertificate(hello)
	}
	return nil, fmt.Errorf("no certificate for %q: add one with `sprout certs add`, or set tls.acme.email for the agent to obtain one", name)
}

// HandleHTTPChallenge answers the CA's HTTP-01 challenge requests (also
// those another host of the environment started, through shared
// storage), and reports whether r was one.
func (m *Manager) HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool {
	if m.acme == nil {
		return false
	}
	return m.acme.issuer.HandleHTTPChallenge(w, r)
}

// Covers tells whether a certificate for host can be served now.
func (m *Manager) Covers(host string) bool {
	host = normalize(host)
	m.mu.Lock()
	y := m.yoursFor(host)
	m.mu.Unlock()
	if y != nil {
		return true
	}
	return m.acme != nil && m.acme.current(host) != nil
}

// yoursFor returns your certificate for host: an exact name wins over a
// wildcard, then the one valid longest. Hold m.mu.
func (m *Manager) yoursFor(host string) *yourCert {
	var best *yourCert
	for _, y := range m.yours {
		if !y.covers(host) {
			continue
		}
		switch {
		case best == nil,
			y.exact(host) && !best.exact(host),
			y.exact(host) == best.exact(host) && y.pair.Leaf.NotAfter.After(best.pair.Leaf.NotAfter):
			best = y
		}
	}
	return best
}

// List describes every certificate: yours, ACME's, and wanted domains
// that have none, by name.
func (m *Manager) List() []Info {
	m.mu.Lock()
	var out []Info
	for _, y := range m.yours {
		i := y.info()
		i.Status = validity(i, m.now())
		if y.err != "" {
			i.Status = StatusFailing
		}
		out = append(out, i)
	}
	for _, d := range m.asked {
		if why := m.unobtainable(d); why != "" && m.yoursFor(d) == nil {
			out = append(out, Info{Name: NameOf(d), Domains: []string{d}, Status: StatusMissing, Error: why})
		}
	}
	m.mu.Unlock()
	if m.acme != nil {
		out = append(out, m.acme.list(m.now())...)
	}
	slices.SortFunc(out, func(a, b Info) int { return strings.Compare(a.Name, b.Name) })
	if out == nil {
		out = []Info{}
	}
	return out
}

// validity is the status of a certificate in hand.
func validity(i Info, now time.Time) string {
	if !i.NotAfter.IsZero() && now.After(i.NotAfter) {
		return StatusExpired
	}
	return StatusValid
}

// AddCertificate stores a certificate and key you bring (PEM: the chain,
// leaf first, and its private key), and serves it from now on for every
// name it holds, instead of ACME's. One with the same name (its first
// domain) is replaced: that is how you renew yours.
func (m *Manager) AddCertificate(certPEM, keyPEM []byte) (Info, error) {
	y, err := parseYours(certPEM, keyPEM, m.now())
	if err != nil {
		return Info{}, err
	}
	m.lockChanges()
	defer m.changes.Unlock()
	if err := saveYours(m.yoursDir, y.name, certPEM, keyPEM); err != nil {
		return Info{}, fmt.Errorf("store the certificate: %w", err)
	}
	m.mu.Lock()
	m.yours[y.name] = y
	m.mu.Unlock()
	m.log.Info("certificate of yours added", "name", y.name, "domains", y.names, "not_after", y.pair.Leaf.NotAfter)
	m.reconcile()
	i := y.info()
	i.Status = StatusValid
	return i, nil
}

// RemoveCertificate deletes one of your certificates by name (or by its
// first domain). Its domains that apps want go back to ACME.
func (m *Manager) RemoveCertificate(name string) error {
	name = NameOf(name)
	m.lockChanges()
	defer m.changes.Unlock()
	m.mu.Lock()
	_, ok := m.yours[name]
	m.mu.Unlock()
	if !ok || strings.ContainsAny(name, `/\`) {
		return fmt.Errorf("%w: %q is none of yours (sprout certs lists them; ACME's are not removed, they go when no app wants them)", ErrNotFound, name)
	}
	if err := os.RemoveAll(filepath.Join(m.yoursDir, name)); err != nil {
		return fmt.Errorf("remove the certificate %s: %w", name, err)
	}
	m.mu.Lock()
	delete(m.yours, name)
	m.mu.Unlock()
	m.log.Info("certificate of yours removed", "name", name)
	m.reconcile()
	return nil
}

// normalize lowercases a host name and drops a port and a trailing dot.
func normalize(host string) string {
	host = strings.ToLower(strings.TrimSpace(host))
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.TrimSuffix(host, ".")
}

// isALPNChallenge tells a CA's TLS-ALPN-01 validation handshake: it offers
// only the acme-tls/1 protocol (RFC 8737).
func isALPNChallenge(hello *tls.ClientHelloInfo) bool {
	return len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == ALPNProto
}

// ALPNProto is the protocol of TLS-ALPN-01 validation: the proxy's TLS
// listener must offer it among its NextProtos for that challenge to work.
const ALPNProto = "acme-tls/1"

// Validate checks the options a config gives, naming the key at fault.
func (o Options) Validate() error {
	if o.Email != "" {
		if a, err := mail.ParseAddress(o.Email); err != nil || a.Address != o.Email {
			return fmt.Errorf("tls.acme.email: %q is not an email address like ops@example.com (the CA writes to it about certificates that fail to renew)", o.Email)
		}
	}
	if o.Directory != "" {
		if u, err := url.Parse(o.Directory); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("tls.acme.directory: %q is not the https:// URL of an ACME directory (Let's Encrypt's is %s)", o.Directory, DefaultDirectory)
		}
	}
	if o.CARoot != "" {
		if _, err := trustedRoots(o.CARoot); err != nil {
			return err
		}
	}
	if o.Storage != "" {
		if obj, err := source.ParseS3URL(o.Storage); err != nil || !strings.HasSuffix(obj.Key, "/") {
			return fmt.Errorf("tls.storage: %q is not an S3 prefix like s3://bucket/envs/prod/tls/ (leave it empty to keep certificates in the data dir)", o.Storage)
		}
	}
	return nil
}

// ACME reports whether the manager obtains certificates from an ACME CA
// (tls.acme.email is set).
func (m *Manager) ACME() bool { return m.acme != nil }
