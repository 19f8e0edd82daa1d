package certs

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sprout-paas/sprout/internal/testenv"
)

// yoursOnly is a manager with ACME off on the data dir dir.
func yoursOnly(t *testing.T, dir string, log *slog.Logger) *Manager {
	t.Helper()
	m, err := New(Options{DataDir: dir}, log)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestYourCertificates brings a certificate and a wildcard one to a
// manager with ACME off: each is served for its names (a wildcard for one
// label only, an exact name before a wildcard), kept owner-only in the
// data dir across a restart, listed, and removed by name.
func TestYourCertificates(t *testing.T) {
	dir := t.TempDir()
	log, buf := testLogger()
	m := yoursOnly(t, dir, log)
	ca := testenv.NewCA(t, "Intranet Root")
	until := time.Now().Add(24 * time.Hour).Truncate(time.Second)
	wildCert, wildKey := ca.Issue(t, until, "*.apps.example", "apps.example")
	info, err := m.AddCertificate(wildCert, wildKey)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "_wildcard.apps.example" || info.Issuer != IssuerYours || info.Managed || info.Status != StatusValid || !info.NotAfter.Equal(until) {
		t.Errorf("added %+v", info)
	}
	exactCert, exactKey := ca.Issue(t, until, "api.apps.example")
	if _, err := m.AddCertificate(exactCert, exactKey); err != nil {
		t.Fatal(err)
	}

	serves := func(m *Manager, host, want string) {
		t.Helper()
		c, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: host})
		switch {
		case want == "" && err == nil:
			t.Errorf("%s: served %v, want none", host, c.Leaf.DNSNames)
		case want == "":
		case err != nil:
			t.Errorf("%s: %v", host, err)
		case c.Leaf.DNSNames[0] != want:
			t.Errorf("%s: served %v, want %s", host, c.Leaf.DNSNames, want)
		}
		if got := m.Covers(host); got != (want != "") {
			t.Errorf("Covers(%s) = %v", host, got)
		}
	}
	serves(m, "web.apps.example", "*.apps.example")
	serves(m, "WEB.Apps.Example", "*.apps.example")
	serves(m, "apps.example", "*.apps.example")
	serves(m, "api.apps.example", "api.apps.example") // exact wins
	serves(m, "a.b.apps.example", "")                 // one label only
	serves(m, "other.example", "")
	if _, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: "other.example"}); err == nil || !strings.Contains(err.Error(), "sprout certs add") {
		t.Errorf("no certificate: %v", err)
	}

	m.Manage([]string{"web.apps.example", "shop.example"})
	list := m.List()
	if len(list) != 3 || list[0].Name != "_wildcard.apps.example" || list[1].Name != "api.apps.example" || list[2].Name != "shop.example" {
		t.Fatalf("List = %+v", list)
	}
	if list[2].Status != StatusMissing || !strings.Contains(list[2].Error, "tls.acme.email") {
		t.Errorf("a wanted domain nothing covers: %+v", list[2])
	}

	for _, p := range []string{"tls", "tls/yours", "tls/yours/_wildcard.apps.example", "tls/yours/_wildcard.apps.example/key.pem", "tls/yours/_wildcard.apps.example/cert.pem"} {
		st, err := os.Stat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %04o", p, st.Mode().Perm())
		}
	}

	again := yoursOnly(t, dir, log)
	serves(again, "web.apps.example", "*.apps.example")
	if err := again.RemoveCertificate("*.apps.example"); err != nil {
		t.Fatal(err)
	}
	serves(again, "web.apps.example", "")
	serves(again, "api.apps.example", "api.apps.example")
	if err := again.RemoveCertificate("web.apps.example"); !errors.Is(err, ErrNotFound) {
		t.Errorf("removing a name that is none of yours: %v", err)
	}
	if strings.Contains(buf.String(), "PRIVATE KEY") {
		t.Error("a private key was logged")
	}
}

// TestYourCertificateReplaced: adding a certificate of the same name
// (yours, renewed) replaces the one served.
func TestYourCertificateReplaced(t *testing.T) {
	log, _ := testLogger()
	m := yoursOnly(t, t.TempDir(), log)
	ca := testenv.NewCA(t, "Intranet Root")
	for _, until := range []time.Time{time.Now().Add(time.Hour), time.Now().Add(48 * time.Hour)} {
		c, k := ca.Issue(t, until, "intranet.example")
		if _, err := m.AddCertificate(c, k); err != nil {
			t.Fatal(err)
		}
	}
	c, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: "intranet.example"})
	if err != nil || c.Leaf.NotAfter.Before(time.Now().Add(47*time.Hour)) {
		t.Fatalf("served %v, %v; want the later one", c.Leaf.NotAfter, err)
	}
	if n := len(m.List()); n != 1 {
		t.Errorf("%d certificates listed, want 1", n)
	}
}

// TestYourCertificateRefused: what cannot be served is refused with why.
func TestYourCertificateRefused(t *testing.T) {
	log, _ := testLogger()
	m := yoursOnly(t, t.TempDir(), log)
	ca := testenv.NewCA(t, "Intranet Root")
	cert, _ := ca.Issue(t, time.Now().Add(time.Hour), "a.example")
	_, otherKey := ca.Issue(t, time.Now().Add(time.Hour), "a.example")
	expired, expiredKey := ca.Issue(t, time.Now().Add(-time.Minute), "old.example")
	escape, escapeKey := ca.Issue(t, time.Now().Add(time.Hour), "../../etc")
	midWild, midWildKey := ca.Issue(t, time.Now().Add(time.Hour), "a.*.example")
	for _, tc := range []struct {
		name      string
		cert, key []byte
		want      string
	}{
		{"key of another certificate", cert, otherKey, "private key does not match"},
		{"not PEM", []byte("hello"), otherKey, "PEM"},
		{"expired", expired, expiredKey, "expired on"},
		{"a name that is a path", escape, escapeKey, `"../../etc" is not a host name`},
		{"a wildcard inside", midWild, midWildKey, `"a.*.example" is not a host name`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.AddCertificate(tc.cert, tc.key)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want ErrInvalid saying %q", err, tc.want)
			}
		})
	}
	if n := len(m.List()); n != 0 {
		t.Errorf("%d certificates after refusals", n)
	}
}

// TestKeyFileOthersCanReadRefused: a key file with mode 0644 is refused,
// naming the fix; with 0600 it is read. A stored key opened up to others
// later is not served, and List says why.
func TestKeyFileOthersCanReadRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k.pem")
	if err := os.WriteFile(path, []byte("-----BEGIN PRIVATE KEY-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadKeyFile(path); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "chmod 600 "+path) || !strings.Contains(err.Error(), "0644") {
		t.Errorf("mode 0644: %v", err)
	}
	os.Chmod(path, 0o600)
	if _, err := ReadKeyFile(path); err != nil {
		t.Errorf("mode 0600: %v", err)
	}

	data := t.TempDir()
	log, _ := testLogger()
	m := yoursOnly(t, data, log)
	c, k := testenv.NewCA(t, "Intranet Root").Issue(t, time.Now().Add(time.Hour), "intranet.example")
	if _, err := m.AddCertificate(c, k); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(data, "tls", "yours", "intranet.example", keyFile), 0o644)
	again := yoursOnly(t, data, log)
	if again.Covers("intranet.example") {
		t.Error("served a certificate whose key others can read")
	}
	if l := again.List(); len(l) != 1 || l[0].Status != StatusFailing || !strings.Contains(l[0].Error, "chmod 600") {
		t.Errorf("List = %+v", l)
	}
}

// TestCertmagicLogsReachSlogWithoutKeys: certmagic's zap lines arrive in
// slog at the mapped level, and a field holding a private key is dropped.
func TestCertmagicLogsReachSlogWithoutKeys(t *testing.T) {
	log, buf := testLogger()
	z := zapToSlog(log.With("component", "certs")).Named("obtain")
	z.With(zap.String("identifier", "a.example")).Error("could not get certificate", zap.String("pem", "-----BEGIN EC PRIVATE KEY-----\nMHc..."), zap.Int("attempt", 2))
	out := buf.String()
	for _, want := range []string{`"level":"ERROR"`, `"msg":"could not get certificate"`, `"identifier":"a.example"`, `"attempt":2`, `"certmagic":"obtain"`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s in %s", want, out)
		}
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Errorf("key logged: %s", out)
	}
	quiet := zapToSlog(slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	quiet.Info("lock acquired")
	if strings.Contains(buf.String(), "lock acquired") {
		t.Error("certmagic's Info lines show at info level")
	}
}

// TestInterruptedReplaceIsRecovered lays out by hand what a replace cut
// short by a crash leaves, and loads: a pair moved aside with none in its
// place is back and served (also as earlier versions named it); one moved
// aside after the new one is in goes; a half-written new pair goes.
func TestInterruptedReplaceIsRecovered(t *testing.T) {
	dir := t.TempDir()
	yours := filepath.Join(dir, "tls", "yours")
	ca := testenv.NewCA(t, "Intranet Root")
	put := func(sub, domain string, until time.Time) {
		t.Helper()
		c, k := ca.Issue(t, until, domain)
		p := filepath.Join(yours, sub)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(p, certFile), c, 0o600)
		os.WriteFile(filepath.Join(p, keyFile), k, 0o600)
	}
	soon, later := time.Now().Add(time.Hour).Truncate(time.Second), time.Now().Add(48*time.Hour).Truncate(time.Second)
	// Cut between the renames: the old pair aside, the new one staged.
	put(".old.a.example", "a.example", soon)
	put(".new.a.example", "a.example", later)
	// The same, as the first version named them.
	put(".new-123456.old", "*.b.example", soon)
	put(".new-123456", "*.b.example", later)
	// Cut after the second rename: the new pair in, the old one aside.
	put("c.example", "c.example", later)
	put(".old.c.example", "c.example", soon)
	// Cut while writing the new pair.
	if err := os.MkdirAll(filepath.Join(yours, ".new.d.example"), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(yours, ".new.d.example", keyFile), []byte("-----BEGIN"), 0o600)

	log, buf := testLogger()
	m := yoursOnly(t, dir, log)
	for host, until := range map[string]time.Time{"a.example": soon, "x.b.example": soon, "c.example": later} {
		c, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: host})
		if err != nil {
			t.Errorf("%s: %v", host, err)
			continue
		}
		if !c.Leaf.NotAfter.Equal(until) {
			t.Errorf("%s: served the one until %s, want %s", host, c.Leaf.NotAfter, until)
		}
	}
	entries, _ := os.ReadDir(yours)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"_wildcard.b.example", "a.example", "c.example"}; !slices.Equal(names, want) {
		t.Errorf("left in %s: %v, want %v", yours, names, want)
	}
	if !strings.Contains(buf.String(), "the one it had is back") {
		t.Error("restoring a certificate was not logged")
	}
}

// TestConcurrentAddsOfOneName: adds of the same name at once all succeed,
// one after the other; one of them is served, and nothing is left beside
// it.
func TestConcurrentAddsOfOneName(t *testing.T) {
	dir := t.TempDir()
	log, _ := testLogger()
	m := yoursOnly(t, dir, log)
	ca := testenv.NewCA(t, "Intranet Root")
	var pairs [][2][]byte
	for i := range 8 {
		c, k := ca.Issue(t, time.Now().Add(time.Duration(i+1)*time.Hour), "same.example")
		pairs = append(pairs, [2][]byte{c, k})
	}
	var wg sync.WaitGroup
	for _, p := range pairs {
		wg.Go(func() {
			if _, err := m.AddCertificate(p[0], p[1]); err != nil {
				t.Errorf("a concurrent add: %v", err)
			}
		})
	}
	wg.Wait()
	if !m.Covers("same.example") {
		t.Fatal("none is served")
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "tls", "yours"))
	if len(entries) != 1 || entries[0].Name() != "same.example" {
		t.Errorf("left: %v", entries)
	}
	served, _ := m.GetCertificate(&tls.ClientHelloInfo{ServerName: "same.example"})
	again := yoursOnly(t, dir, log)
	stored, _ := again.GetCertificate(&tls.ClientHelloInfo{ServerName: "same.example"})
	if served == nil || stored == nil || !served.Leaf.Equal(stored.Leaf) {
		t.Error("the certificate served is not the one stored")
	}
}
