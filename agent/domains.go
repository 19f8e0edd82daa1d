package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/net/idna"

	"github.com/sprout-paas/sprout/proxy"
	"github.com/sprout-paas/sprout/store"
)

// Apps by domain. An app with domains is served on the proxy's shared
// HTTP and HTTPS ports, chosen by each request's host, instead of on a
// port of its own. Its domains are part of its state, kept across
// deploys; a deploy with --domain replaces them, and `sprout domains add`
// and `rm` change them without one. A name is one app's only. Whenever
// the domains the proxy serves change, the certificate manager, when
// there is one, hears the whole set.

// CertManager obtains certificates for app domains (package certs implements it).
type CertManager interface {
	proxy.Certificates
	Manage(domains []string) // the whole set of domains that want an ACME certificate; returns at once
}

// SetCertManager gives the agent its certificate manager; call it before
// Start. The proxy gets the same manager as its Certificates
// (proxy.Options), which opens its HTTPS port.
func (a *Agent) SetCertManager(m CertManager) { a.certs = m }

// ValidateDomains checks and normalises domains: in lower case, in IDNA's
// ASCII form (an internationalised name is converted), without a
// trailing dot, each once, sorted. A leading "*." makes a wildcard of one
// label, which only a certificate brought by the user can cover (ACME is
// not asked for wildcards). Ports, schemes, paths and IP addresses are
// refused.
func ValidateDomains(names []string) ([]string, error) {
	var out []string
	for _, raw := range names {
		name, err := validateDomain(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: domain %q: %v", ErrInvalid, raw, err)
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// domainProfile is IDNA's lookup profile with DNS's lengths checked: no
// empty label, none over 63 bytes, at most 253 in all.
var domainProfile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.StrictDomainName(true), idna.VerifyDNSLength(true))

func validateDomain(raw string) (string, error) {
	name := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(raw)), ".")
	switch {
	case name == "":
		return "", fmt.Errorf("empty")
	case strings.Contains(name, "://"):
		return "", fmt.Errorf("a domain has no scheme: give %s alone", name[strings.Index(name, "://")+3:])
	case strings.ContainsAny(name, "/?#@"):
		return "", fmt.Errorf("a domain has no path, query or user: give the host name alone")
	case strings.Contains(name, ":"):
		return "", fmt.Errorf("a domain has no port: apps with domains are served on proxy.http_port and proxy.https_port")
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return "", fmt.Errorf("an IP address is not a domain: serve the app on a port of its own (--port)")
	}
	wild := ""
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		wild, name = "*.", rest
	}
	ascii, err := domainProfile.ToASCII(name)
	if err != nil {
		return "", fmt.Errorf("not a valid host name: %v", err)
	}
	if !strings.Contains(ascii, ".") && !(ascii == "localhost" && wild == "") {
		return "", fmt.Errorf("give a fully qualified name (like www.example.com; localhost is the one exception, for trying it out)")
	}
	return wild + ascii, nil
}

// domainsOf is how the proxy serves app by its domains (none when it has
// none).
func domainsOf(app *store.App) proxy.Domains {
	return proxy.Domains{Names: app.Domains, NoRedirect: app.HTTPS.NoRedirect, HSTSMaxAge: app.HTTPS.HSTSMaxAge}
}

// checkDomainsFree refuses names that another app has, naming it.
func (a *Agent) checkDomainsFree(app string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	apps, err := a.store.Apps()
	if err != nil {
		return err
	}
	for _, other := range apps {
		if other.Name == app {
			continue
		}
		for _, n := range names {
			if slices.Contains(other.Domains, n) {
				return fmt.Errorf("%w: domain %s is app %s's (free it with `sprout domains rm --app %s %s`)", ErrConflict, n, other.Name, other.Name, n)
			}
		}
	}
	return nil
}

// serveDomains makes the proxy serve app by d's names (none: by none),
// and tells the certificate manager when the set of domains changed.
func (a *Agent) serveDomains(app string, d proxy.Domains) error {
	if err := a.router.SetDomains(app, d, a.cfg.DrainTimeout); err != nil {
		if errors.Is(err, proxy.ErrDomainTaken) || errors.Is(err, proxy.ErrPortInUse) {
			return fmt.Errorf("%w: %w", ErrConflict, err)
		}
		return err
	}
	a.mu.Lock()
	if len(d.Names) == 0 {
		delete(a.served, app)
	} else {
		a.served[app] = slices.Clone(d.Names)
	}
	a.mu.Unlock()
	a.manageCerts()
	return nil
}

// forgetDomains drops what the agent knows of a removed app's domains
// (the proxy dropped them with the app).
func (a *Agent) forgetDomains(app string) {
	a.mu.Lock()
	delete(a.served, app)
	a.mu.Unlock()
	a.manageCerts()
}

// manageCerts tells the certificate manager the domains that want an ACME
// certificate (every domain served but wildcards) when they changed. The
// set is computed and handed over under certsMu, so that an older set is
// never handed over after a newer one (Manage returns at once).
func (a *Agent) manageCerts() {
	if a.certs == nil {
		return
	}
	if !a.certsMu.TryLock() {
		if testHookCertsBusy != nil {
			testHookCertsBusy()
		}
		a.certsMu.Lock()
	}
	defer a.certsMu.Unlock()
	a.mu.Lock()
	var want []string
	for _, names := range a.served {
		for _, n := range names {
			if !strings.HasPrefix(n, "*.") {
				want = append(want, n)
			}
		}
	}
	slices.Sort(want)
	want = slices.Compact(want)
	changed := !slices.Equal(want, a.managed) || a.managed == nil
	if changed {
		a.managed = want
		if a.managed == nil {
			a.managed = []string{}
		}
	}
	a.mu.Unlock()
	if changed {
		a.certs.Manage(want)
	}
}

// testHookCertsBusy, when set, runs when manageCerts waits for another
// to finish.
var testHookCertsBusy func()

// DomainInfo is one domain of an app, as `sprout domains` lists it.
type DomainInfo struct {
	App  string `json:"app"`
	Name string `json:"name"`
	// Certificate says whether a certificate covers the name now; it is
	// false on an agent without certificates (HTTP only).
	Certificate bool `json:"certificate"`
	// Redirect says whether plain HTTP requests are sent to HTTPS (once
	// a certificate covers the name); HSTSMaxAge is the app's HSTS.
	Redirect   bool `json:"redirect"`
	HSTSMaxAge int  `json:"hsts_max_age,omitempty"`
}

// Domains lists the domains of app, or of every app when app is "".
func (a *Agent) Domains(app string) ([]DomainInfo, error) {
	var apps []*store.App
	if app != "" {
		one, err := a.store.App(app)
		if err != nil {
			return nil, err
		}
		apps = []*store.App{one}
	} else {
		var err error
		if apps, err = a.store.Apps(); err != nil {
			return nil, err
		}
	}
	out := []DomainInfo{}
	for _, x := range apps {
		for _, n := range x.Domains {
			info := DomainInfo{App: x.Name, Name: n, Redirect: !x.HTTPS.NoRedirect, HSTSMaxAge: x.HTTPS.HSTSMaxAge}
			if a.certs != nil {
				info.Certificate = a.certs.Covers(n)
			}
			out = append(out, info)
		}
	}
	return out, nil
}

// HasCertificates tells whether the agent serves HTTPS (it has a
// certificate manager).
func (a *Agent) HasCertificates() bool { return a.certs != nil }

// ObtainsCertificates tells whether the certificate manager asks an ACME
// CA for the domains no certificate of yours covers.
func (a *Agent) ObtainsCertificates() bool {
	m, ok := a.certs.(interface{ ACME() bool })
	return ok && m.ACME()
}

// ChangeDomains adds and removes domains of app without a deploy, and
// returns its domains after. When the app serves, the proxy serves it by
// its new domains at once: an app that gets its first domains leaves its
// own port for the shared ones, and one that loses its last goes back to
// its own port. A name another app has is refused, naming it; the app
// keeps what it had on any error.
func (a *Agent) ChangeDomains(ctx context.Context, name string, add, remove []string, noWait bool, p Progress) ([]string, error) {
	add, err := ValidateDomains(add)
	if err != nil {
		return nil, err
	}
	remove, err = ValidateDomains(remove)
	if err != nil {
		return nil, err
	}
	unlock, err := a.lock(ctx, name, noWait, p)
	if err != nil {
		return nil, err
	}
	defer unlock()
	app, err := a.store.App(name)
	if err != nil {
		return nil, err
	}
	for _, n := range remove {
		if !slices.Contains(app.Domains, n) {
			return nil, fmt.Errorf("%w: %s is not a domain of %s (it has %s)", ErrInvalid, n, name, orNone(app.Domains))
		}
	}
	set := map[string]bool{}
	for _, n := range append(slices.Clone(app.Domains), add...) {
		set[n] = !slices.Contains(remove, n)
	}
	var next []string
	for _, n := range slices.Sorted(maps.Keys(set)) {
		if set[n] {
			next = append(next, n)
		}
	}
	a.claims.Lock()
	defer a.claims.Unlock()
	if err := a.checkDomainsFree(name, next); err != nil {
		return nil, err
	}
	was := *app
	app.Domains = next
	if app.Serving != "" {
		if err := a.moveServing(&was, app, p); err != nil {
			return nil, err
		}
	}
	if err := a.store.PutApp(app); err != nil {
		return nil, err
	}
	a.event(name, app.Serving, "domains", "domains of %s: %s", name, orNone(next))
	return next, nil
}

// moveServing serves a serving app by next's domains instead of was's:
// the new way opens first, then the old one closes.
func (a *Agent) moveServing(was, next *store.App, p Progress) error {
	if _, direct := a.servingRouting(was).(*directRouting); direct {
		return fmt.Errorf("%w: %s's container publishes port %d itself (ProxyServer none), so it cannot be served by domain: deploy a version that uses the proxy first", ErrInvalid, was.Name, was.Port)
	}
	switch {
	case len(next.Domains) > 0:
		if err := a.serveDomains(next.Name, domainsOf(next)); err != nil {
			return err
		}
		if port := was.OwnPort(); port != 0 {
			a.router.Close(port, a.cfg.DrainTimeout)
			p.Line(fmt.Sprintf("%s is served by domain on the shared ports; closed its port %d", next.Name, port))
		}
	default:
		if err := a.router.Listen(next.Name, next.Port); err != nil {
			return fmt.Errorf("%s cannot go back to its port %d: %w (choose another with `sprout deploy --port`, then remove its domains)", next.Name, next.Port, err)
		}
		if err := a.serveDomains(next.Name, proxy.Domains{}); err != nil {
			return err
		}
		p.Line(fmt.Sprintf("%s has no domains left: it is served on its port %d again", next.Name, next.Port))
	}
	return nil
}

func orNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
