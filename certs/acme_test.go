package certs

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/testenv"
)

// started is a manager against a fresh Pebble, with the frontend Pebble
// validates against.
type started struct {
	m      *Manager
	pebble *testenv.Pebble
	front  *frontend
	log    *testenv.SyncBuffer
}

func start(t *testing.T, validity time.Duration, tweak func(*Options)) started {
	t.Helper()
	lazy := &lazyCerts{}
	f := serve(t, lazy)
	p := testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: f.httpPort, TLSPort: f.tlsPort, Validity: validity})
	opts := acmeOptions(t, p, f)
	if tweak != nil {
		tweak(&opts)
	}
	log, buf := testLogger()
	m, err := New(opts, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	lazy.m.Store(m)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("manager log:\n%s", buf)
		}
	})
	return started{m: m, pebble: p, front: f, log: buf}
}

func infoOf(m *Manager, name string) (Info, bool) {
	for _, i := range m.List() {
		if i.Name == name {
			return i, true
		}
	}
	return Info{}, false
}

// TestObtainsFromPebble gets a certificate from a real ACME CA with each
// challenge type: Pebble resolves the domain to loopback through
// challtestsrv and validates against the frontend, and the certificate
// served then chains to Pebble's root. A domain one of your certificates
// covers is not asked of the CA, and yours is served for it.
func TestObtainsFromPebble(t *testing.T) {
	t.Parallel() // each with its own Pebble
	for _, tc := range []struct {
		challenge string
		tweak     func(*Options)
		count     func(*frontend) int64
		other     func(*frontend) int64
	}{
		{"http-01", func(o *Options) { o.DisableTLSALPN01 = true }, func(f *frontend) int64 { return f.http01.Load() }, func(f *frontend) int64 { return f.alpn01.Load() }},
		{"tls-alpn-01", func(o *Options) { o.DisableHTTP01 = true }, func(f *frontend) int64 { return f.alpn01.Load() }, func(f *frontend) int64 { return f.http01.Load() }},
	} {
		t.Run(tc.challenge, func(t *testing.T) {
			s := start(t, 0, tc.tweak)
			domain := "web-" + tc.challenge + ".sprout.test"
			s.pebble.Host(t, domain, "127.0.0.1")
			ca := testenv.NewCA(t, "Intranet Root")
			yourCert, yourKey := ca.Issue(t, time.Now().Add(24*time.Hour), "intranet.sprout.test")
			if _, err := s.m.AddCertificate(yourCert, yourKey); err != nil {
				t.Fatal(err)
			}

			s.m.Manage([]string{domain, "intranet.sprout.test", "*.wild.sprout.test"})
			if i, _ := infoOf(s.m, domain); i.Status != StatusObtaining && i.Status != StatusValid {
				t.Errorf("right after Manage: %+v, want obtaining", i)
			}
			testenv.Eventually(t, 60*time.Second, func() error {
				if !s.m.Covers(domain) {
					i, _ := infoOf(s.m, domain)
					return fmt.Errorf("no certificate for %s yet: %+v", domain, i)
				}
				return nil
			})
			if n := tc.count(s.front); n == 0 {
				t.Errorf("Pebble made no %s validation against the frontend", tc.challenge)
			}
			if n := tc.other(s.front); n != 0 {
				t.Errorf("the other challenge type was answered %d times; it is turned off", n)
			}
			leaf, err := s.front.handshake(domain, s.pebble.Roots(t))
			if err != nil {
				t.Fatalf("TLS to %s with Pebble's root trusted: %v", domain, err)
			}
			if !strings.Contains(leaf.Issuer.CommonName, "Pebble") || leaf.DNSNames[0] != domain {
				t.Errorf("served %v from %q, want %s from Pebble", leaf.DNSNames, leaf.Issuer.CommonName, domain)
			}
			i, _ := infoOf(s.m, domain)
			if i.Status != StatusValid || !i.Managed || !strings.Contains(i.Issuer, "Pebble") || i.LastRenewal.IsZero() || i.NotAfter.Before(time.Now()) || i.Error != "" {
				t.Errorf("List says %+v", i)
			}

			// Yours covers intranet.sprout.test: served, not asked of the CA.
			mine, err := s.front.handshake("intranet.sprout.test", ca.Pool)
			if err != nil {
				t.Fatalf("your certificate is not served: %v", err)
			}
			if mine.Issuer.CommonName != "Intranet Root" {
				t.Errorf("served %q's certificate for intranet.sprout.test, want yours", mine.Issuer.CommonName)
			}
			for _, i := range s.m.List() {
				if i.Managed && slices.Contains(i.Domains, "intranet.sprout.test") {
					t.Errorf("intranet.sprout.test was asked of the CA: %+v", i)
				}
			}
			if i, _ := infoOf(s.m, "_wildcard.wild.sprout.test"); i.Status != StatusMissing || !strings.Contains(i.Error, "a wildcard needs one of yours") {
				t.Errorf("a wildcard domain: %+v", i)
			}
			checkOwnerOnly(t, s.m.opts.DataDir)
			if strings.Contains(s.log.String(), "PRIVATE KEY") {
				t.Error("a private key was logged")
			}
		})
	}
}

// checkOwnerOnly fails the test if a file under dir is readable by others
// or a directory is open to them, or if no key was stored.
func checkOwnerOnly(t *testing.T, dir string) {
	t.Helper()
	keys := 0
	filepath.WalkDir(filepath.Join(dir, "tls"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, _ := d.Info()
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %04o; want owner-only", path, st.Mode().Perm())
		}
		if strings.HasSuffix(path, ".key") || strings.HasSuffix(path, keyFile) {
			keys++
		}
		return nil
	})
	if keys == 0 {
		t.Errorf("no key file under %s", dir)
	}
}

// TestRenewsShortLivedCertificate has Pebble issue 20-second certificates:
// certmagic's maintenance renews one before it expires, and handshakes
// made all along (no retries) never fail.
func TestRenewsShortLivedCertificate(t *testing.T) {
	t.Parallel() // each with its own Pebble
	s := start(t, 20*time.Second, nil)
	domain := "renew.sprout.test"
	s.pebble.Host(t, domain, "127.0.0.1")
	roots := s.pebble.Roots(t)
	s.m.Manage([]string{domain})
	testenv.Eventually(t, 60*time.Second, func() error {
		if !s.m.Covers(domain) {
			return errors.New("no certificate yet")
		}
		return nil
	})
	first, err := s.front.handshake(domain, roots)
	if err != nil {
		t.Fatal(err)
	}
	firstInfo, _ := infoOf(s.m, domain)

	var handshakes, failures atomic.Int64
	var firstFailure atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			handshakes.Add(1)
			if _, err := s.front.handshake(domain, roots); err != nil {
				failures.Add(1)
				firstFailure.CompareAndSwap(nil, err.Error())
			}
		}
	})
	var renewed Info
	testenv.Eventually(t, 40*time.Second, func() error {
		leaf, err := s.front.handshake(domain, roots)
		if err != nil {
			return err
		}
		if leaf.SerialNumber.Cmp(first.SerialNumber) == 0 {
			return fmt.Errorf("still the first certificate, expiring %s", leaf.NotAfter.Format(time.TimeOnly))
		}
		if time.Now().After(first.NotAfter) {
			t.Errorf("renewed only after the first certificate expired at %s", first.NotAfter)
		}
		renewed, _ = infoOf(s.m, domain)
		return nil
	})
	close(stop)
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Errorf("%d of %d handshakes failed during renewal; first: %v", n, handshakes.Load(), firstFailure.Load())
	}
	t.Logf("%d handshakes during renewal, none failed", handshakes.Load())
	if !renewed.LastRenewal.After(firstInfo.LastRenewal) || !renewed.NotAfter.After(firstInfo.NotAfter) {
		t.Errorf("List after renewal %+v, before %+v", renewed, firstInfo)
	}
	if !strings.Contains(s.log.String(), `"msg":"certificate renewed"`) {
		t.Error("the renewal was not logged")
	}
}

// TestFailedIssuanceIsReportedAndRetried points the domain at a loopback
// address where nothing listens: Pebble cannot connect, List reports the
// CA's error and when the next attempt is due, attempts go on with
// back-off, and once the domain points at the frontend a retry succeeds.
func TestFailedIssuanceIsReportedAndRetried(t *testing.T) {
	t.Parallel() // each with its own Pebble
	s := start(t, 0, func(o *Options) { o.FirstRetry = time.Second })
	domain := "down.sprout.test"
	s.pebble.Host(t, domain, "127.0.0.2")
	s.m.Manage([]string{domain})

	var failed Info
	testenv.Eventually(t, 60*time.Second, func() error {
		failed, _ = infoOf(s.m, domain)
		if failed.Status != StatusFailing {
			return fmt.Errorf("not failing yet: %+v", failed)
		}
		return nil
	})
	t.Logf("reported: %s (next retry in %s)", failed.Error, time.Until(failed.NextRetry).Round(time.Millisecond))
	if !strings.Contains(failed.Error, "the CA said (") || !strings.Contains(failed.Error, "127.0.0.2") ||
		!strings.Contains(failed.Error, "check that "+domain+" resolves to this host") {
		t.Errorf("error %q does not carry the CA's words and what to check", failed.Error)
	}
	if failed.NextRetry.IsZero() || failed.NextRetry.Before(time.Now().Add(-time.Second)) {
		t.Errorf("next retry %s", failed.NextRetry)
	}
	if s.m.Covers(domain) {
		t.Error("covers a domain it has no certificate for")
	}
	// HTTP goes on.
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := strings.Count(s.log.String(), `"msg":"no certificate obtained`); n < 2 {
			return fmt.Errorf("%d attempts failed so far, want a retry", n)
		}
		return nil
	})
	if !strings.Contains(s.log.String(), `"attempt":2`) {
		t.Errorf("the retry does not count as attempt 2:\n%s", s.log)
	}

	s.pebble.Unhost(t, domain)
	s.pebble.Host(t, domain, "127.0.0.1")
	testenv.Eventually(t, 60*time.Second, func() error {
		if i, _ := infoOf(s.m, domain); i.Status != StatusValid || i.Error != "" || !i.NextRetry.IsZero() {
			return fmt.Errorf("not recovered: %+v", i)
		}
		return nil
	})
}

// TestDataDirStorageSurvivesRestart: a manager started again on the same
// data dir serves the certificate it had, without asking the CA.
func TestDataDirStorageSurvivesRestart(t *testing.T) {
	t.Parallel() // each with its own Pebble
	s := start(t, 0, nil)
	domain := "again.sprout.test"
	s.pebble.Host(t, domain, "127.0.0.1")
	s.m.Manage([]string{domain})
	testenv.Eventually(t, 60*time.Second, func() error {
		if !s.m.Covers(domain) {
			return errors.New("no certificate yet")
		}
		return nil
	})
	s.m.Close()
	validations := s.front.http01.Load() + s.front.alpn01.Load()
	log, _ := testLogger()
	again, err := New(s.m.opts, log)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	again.Manage([]string{domain})
	testenv.Eventually(t, 10*time.Second, func() error {
		if !again.Covers(domain) {
			return errors.New("not loaded yet")
		}
		return nil
	})
	if n := s.front.http01.Load() + s.front.alpn01.Load(); n != validations {
		t.Errorf("the CA validated %d more times after a restart", n-validations)
	}
	if _, err := os.Stat(filepath.Join(s.m.opts.DataDir, "tls", "acme")); err != nil {
		t.Error(err)
	}
}

// TestDomainDroppedAndWantedAgainKeepsItsCertificate: a domain dropped
// while its first keep is still in ManageSync, and wanted again, keeps
// the certificate its second keep cached when the first one ends: the
// first keep is held after ManageSync until then.
func TestDomainDroppedAndWantedAgainKeepsItsCertificate(t *testing.T) {
	t.Parallel() // each with its own Pebble
	s := start(t, 0, nil)
	domain := "again-wanted.sprout.test"
	s.pebble.Host(t, domain, "127.0.0.1")
	firstIn, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	s.m.hooks.kept = func(string) {
		if calls.Add(1) == 1 {
			close(firstIn)
			<-release
		}
	}
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	s.m.Manage([]string{domain})
	select {
	case <-firstIn:
	case <-time.After(60 * time.Second):
		t.Fatalf("the first keep did not end its ManageSync: %+v", s.m.List())
	}
	s.m.Manage(nil)
	if s.m.Covers(domain) {
		t.Error("a dropped domain's certificate is still served")
	}
	s.m.Manage([]string{domain})
	testenv.Eventually(t, 30*time.Second, func() error {
		if !s.m.Covers(domain) {
			return errors.New("the second keep has not cached the certificate yet")
		}
		return nil
	})
	close(release)
	s.m.acme.wg.Wait() // both keeps have ended
	if !s.m.Covers(domain) {
		t.Error("the first keep, ending, took the certificate of a domain wanted again out of the cache")
	}
	if got := s.m.acme.wanted(); !slices.Equal(got, []string{domain}) {
		t.Errorf("asked of the CA: %v", got)
	}
}

// TestNoObtainWhileTheProxyDoesNotListen: while nothing listens on the
// proxy's ports, no obtain starts (certmagic would listen there itself,
// answer the CA and take the ports from the proxy), and the reason is
// listed; once the proxy listens, a retry obtains the certificate,
// validated through the proxy.
func TestNoObtainWhileTheProxyDoesNotListen(t *testing.T) {
	t.Parallel() // each with its own Pebble
	httpPort, tlsPort := testenv.FreePort(t), testenv.FreePort(t)
	p := testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: httpPort, TLSPort: tlsPort})
	domain := "later.sprout.test"
	p.Host(t, domain, "127.0.0.1")
	log, buf := testLogger()
	m, err := New(Options{
		DataDir: t.TempDir(), Email: "ops@sprout.test", Directory: p.Directory, CARoot: p.CARoot,
		ListenHost: "127.0.0.1", HTTPPort: httpPort, TLSPort: tlsPort, FirstRetry: 500 * time.Millisecond,
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("manager log:\n%s", buf)
		}
	})
	m.Manage([]string{domain})
	want := fmt.Sprintf("the proxy does not listen on 127.0.0.1:%d (proxy.http_port) yet", httpPort)
	testenv.Eventually(t, 30*time.Second, func() error {
		if m.Covers(domain) {
			t.Fatal("obtained a certificate with nothing listening on the proxy's ports: certmagic answered the CA itself")
		}
		if n := strings.Count(buf.String(), want); n < 2 {
			return fmt.Errorf("%d attempts refused so far, want 2: %+v", n, m.List())
		}
		return nil
	})
	if i, _ := infoOf(m, domain); i.Status != StatusFailing || !strings.Contains(i.Error, want) {
		t.Errorf("listed as %+v, want failing with %q", i, want)
	}
	if m.Covers(domain) {
		t.Fatal("obtained a certificate with nothing listening on the proxy's ports: certmagic answered the CA itself")
	}

	lazy := &lazyCerts{}
	lazy.m.Store(m)
	hl, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
	if err != nil {
		t.Fatalf("the proxy's HTTP port was taken meanwhile: %v", err)
	}
	tl, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", tlsPort))
	if err != nil {
		t.Fatalf("the proxy's TLS port was taken meanwhile: %v", err)
	}
	f := serveOn(t, lazy, hl, tl)
	testenv.Eventually(t, 60*time.Second, func() error {
		if !m.Covers(domain) {
			i, _ := infoOf(m, domain)
			return fmt.Errorf("no certificate yet: %+v", i)
		}
		return nil
	})
	if f.http01.Load()+f.alpn01.Load() == 0 {
		t.Error("the CA validated without reaching the proxy")
	}
}
