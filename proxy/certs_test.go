package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// testCerts is a Certificates of the tests' own: a self-signed CA and
// leaf certificates made for the test's names (wildcards too), an ACME
// TLS-ALPN-01 challenge certificate, and HTTP-01 tokens.
type testCerts struct {
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPEM  []byte
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
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sprout test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	c := &testCerts{ca: ca, caKey: key, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		byName: map[string]*tls.Certificate{}, tokens: map[string]string{}}
	for i, name := range names {
		c.byName[name] = c.leaf(t, int64(i+2), name)
	}
	return c
}

// leaf makes a certificate for name signed by the CA.
func (c *testCerts) leaf(t testing.TB, serial int64, name string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca, &key.PublicKey, c.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// pool is a client's trust in the CA.
func (c *testCerts) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.ca)
	return p
}

// caFile writes the CA for curl.
func (c *testCerts) caFile(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, c.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

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
