package proxy

import (
	"bufio"
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
)

// fuzzSites is the table the routing fuzz test routes by.
func fuzzSites() (*siteTable, map[*site]string) {
	a, b, c := &site{}, &site{}, &site{}
	t := &siteTable{
		exact: map[string]*site{"a.example.com": a, "xn--bcher-kva.example": b, "w.example.com": c},
		wild:  map[string]*site{"w.example.com": b, "example.com": c},
	}
	return t, map[*site]string{a: "a", b: "b", c: "c", nil: ""}
}

// refRoute is the routing rule written plainly: a host without a port
// (or with one after a single colon), in ASCII lower case, without one
// trailing dot; its exact name, else a wildcard one label up whose label
// is letters, digits, - and _.
func refRoute(t *siteTable, host string) *site {
	if strings.Count(host, ":") == 1 && !strings.HasPrefix(host, "[") {
		host, _, _ = strings.Cut(host, ":")
	}
	if strings.HasPrefix(host, "[") || strings.Contains(host, ":") {
		return nil // an IPv6 literal, or no host name
	}
	var b strings.Builder
	for _, r := range []byte(strings.TrimSuffix(host, ".")) {
		if 'A' <= r && r <= 'Z' {
			r += 'a' - 'A'
		}
		b.WriteByte(r)
	}
	name := b.String()
	if s := t.exact[name]; s != nil {
		return s
	}
	label, parent, ok := strings.Cut(name, ".")
	if !ok || label == "" || len(label) > 63 || strings.Trim(label, "abcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
		return nil
	}
	return t.wild[parent]
}

// FuzzHostRouting checks the shared ports' routing by Host and by SNI:
// the fast lookup agrees with the plain rule, both client sides route a
// head's Host alike, and certificates are asked for by the name the
// lookup uses.
func FuzzHostRouting(f *testing.F) {
	for _, seed := range [][2]string{
		{"a.example.com", "a.example.com"},
		{"A.EXAMPLE.COM.", "A.Example.com"},
		{"a.example.com:8080", "a.example.com."},
		{"x.w.example.com:443", "x.w.example.com"},
		{"X_1.W.Example.Com", "x_1.w.example.com"},
		{"w.example.com", ""},
		{"y.x.w.example.com", "y.x.w.example.com"},
		{"-.w.example.com", "-.w.example.com"},
		{"*.w.example.com", "*.w.example.com"},
		{"é.w.example.com", "é.w.example.com"},
		{"xn--bcher-kva.example", "xn--bcher-kva.example"},
		{"[::1]:80", "::1"},
		{"[a.example.com]:80", ""},
		{"::1", ""},
		{"a.example.com:80:80", ""},
		{":", ":"},
		{"", ""},
		{".", "."},
		{"a..example.com", "a..example.com"},
		{"a.example.com\t", "a.example.com "},
		{"evil@a.example.com", "evil@a.example.com"},
		{"a.example.com/x", "a.example.com/x"},
	} {
		f.Add(seed[0], seed[1])
	}
	table, names := fuzzSites()
	f.Fuzz(func(t *testing.T, host, sni string) {
		got, name := table.lookup(host)
		if want := refRoute(table, host); got != want {
			t.Fatalf("Host %q routes to %q, the rule says %q", host, names[got], names[want])
		}
		if got != nil && strings.ContainsAny(name, "/@?#[]:\\ \t\r\n") {
			t.Fatalf("Host %q routed by %q, which is not a host name (redirects write it)", host, name)
		}
		// Both client sides read the same Host from the same head.
		head := "GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
		var fh fastHead
		if err := parseHead([]byte(head[:len(head)-2]), &fh); err == nil {
			if s, _ := table.lookup(fh.host); s != refRoute(table, strings.Trim(host, " \t")) {
				t.Fatalf("fast path: Host %q routes to %q", host, names[s])
			}
			if r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head))); err == nil {
				if s, _ := table.lookup(r.Host); s != refRoute(table, strings.Trim(host, " \t")) {
					t.Fatalf("net/http: Host %q (read as %q) routes to %q", host, r.Host, names[s])
				}
			}
		}
		// The certificate is asked for by the name routing uses.
		certs := &testCerts{byName: map[string]*tls.Certificate{}}
		p := &Proxy{opts: Options{Certificates: certs}}
		p.getCertificate(&tls.ClientHelloInfo{ServerName: sni})
		asked := certs.seen()[0]
		if asked != hostKey(sni) || strings.ContainsAny(asked, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") {
			t.Fatalf("SNI %q: certificates asked for %q", sni, asked)
		}
		if s, _ := table.lookup(sni); s != refRoute(table, sni) {
			t.Fatalf("SNI %q routes to %q, the rule says %q", sni, names[s], names[refRoute(table, sni)])
		}
	})
}
