package proxy

import (
	"strconv"
	"strings"
)

// Host routing: on the shared ports, each request goes to the app one of
// whose domains its Host names. The table is rebuilt whenever domains
// change and swapped in as one pointer, so that the request path reads it
// without a lock; a lookup is one or two map reads and allocates nothing
// for a host already in lower case.

// site is one app as the shared ports serve it.
type site struct {
	svc *Service
	// redirect sends plain HTTP requests to HTTPS (308) when a
	// certificate covers their host.
	redirect bool
	// hsts is the Strict-Transport-Security value of HTTPS responses,
	// "" for none.
	hsts string
}

// siteTable maps host names to sites.
type siteTable struct {
	// exact maps a name to its site; wild maps the parent of a "*."
	// wildcard ("example.com" for *.example.com) to its site.
	exact, wild map[string]*site
	// fallback is Options.DefaultApp's site, nil when it is not served.
	fallback *site
}

// lookup returns the site of host (a Host header or an SNI name, as it
// came) and the name it was routed by: an exact domain first, then a
// wildcard one label up. A wildcard matches one label of letters,
// digits, '-' and '_' only, so that what it matched is a host name
// (redirects write it into Location).
func (t *siteTable) lookup(host string) (*site, string) {
	name := hostKey(host)
	if s, ok := t.exact[name]; ok {
		return s, name
	}
	if i := strings.IndexByte(name, '.'); i > 0 && len(t.wild) > 0 && isLabel(name[:i]) {
		if s, ok := t.wild[name[i+1:]]; ok {
			return s, name
		}
	}
	return nil, name
}

// hostKey returns the name a host is routed by: without its port, in
// lower case, without a trailing dot. It allocates only for a host with
// capitals.
func hostKey(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		switch {
		case host[0] == '[':
			// An IPv6 literal: [::1]:8080.
			if j := strings.IndexByte(host, ']'); j > 0 {
				host = host[:j+1]
			}
		case strings.IndexByte(host, ':') == i:
			host = host[:i]
		}
	}
	host = strings.TrimSuffix(host, ".")
	for i := 0; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			return strings.Map(lowerASCIIRune, host)
		}
	}
	return host
}

func lowerASCIIRune(r rune) rune {
	if 'A' <= r && r <= 'Z' {
		return r + 32
	}
	return r
}

// isLabel tells whether s is one DNS label as a wildcard may match it.
func isLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// hstsValue is the Strict-Transport-Security value for a max-age in
// seconds; "" for none.
func hstsValue(maxAge int) string {
	if maxAge <= 0 {
		return ""
	}
	return "max-age=" + strconv.Itoa(maxAge)
}
