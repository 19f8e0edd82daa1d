package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sprout-paas/sprout/internal/testenv"
)

// testCerts is a Certificates of the tests' own: leaf certificates made
// for the test's names (wildcards too) by a CA of its own, TLS-ALPN-01
// hellos counted, and HTTP-01 tokens.
type testCerts struct {
	ca     *testenv.CA
	byName map[string]*tls.Certificate
	// tokens answer HTTP-01 challenges: path token → key authorization.
	tokens map[string]string

	mu sync.Mutex
	// snis lists the server names GetCertificate was asked for, and
	// challenges the TLS-ALPN-01 hellos among them.
	snis       []string
	challenges int
}

// newTestCerts makes a CA and one leaf certificate for each of names.
func newTestCerts(t testing.TB, names ...string) *testCerts {
	t.Helper()
	c := &testCerts{ca: testenv.NewCA(t, "sprout test CA"), byName: map[string]*tls.Certificate{}, tokens: map[string]string{}}
	for _, name := range names {
		c.byName[name] = c.ca.Leaf(t, name)
	}
	return c
}

// pool is a client's trust in the CA.
func (c *testCerts) pool() *x509.CertPool { return c.ca.Pool }

// find returns the certificate of name: its own, or a wildcard's one
// label up.
func (c *testCerts) find(name string) *tls.Certificate {
	if cert, ok := c.byName[name]; ok {
		return cert
	}
	if _, parent, ok := strings.Cut(name, "."); ok {
		return c.byName["*."+parent]
	}
	return nil
}

func (c *testCerts) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	c.snis = append(c.snis, hello.ServerName)
	if slices.Contains(hello.SupportedProtos, ACMETLS1) {
		c.challenges++
	}
	c.mu.Unlock()
	if cert := c.find(hello.ServerName); cert != nil {
		return cert, nil
	}
	return nil, errNoCert
}

var errNoCert = errors.New("no certificate for this name")

func (c *testCerts) HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool {
	token, ok := strings.CutPrefix(r.URL.Path, acmeChallengePrefix)
	if !ok {
		return false
	}
	auth, ok := c.tokens[token]
	if !ok {
		return false
	}
	w.Write([]byte(auth))
	return true
}

func (c *testCerts) Covers(host string) bool { return c.find(host) != nil }

// seen returns the server names asked for so far.
func (c *testCerts) seen() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.snis)
}

var _ Certificates = (*testCerts)(nil)
