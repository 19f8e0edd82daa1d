package certs

import (
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/sprout-paas/sprout/internal/testenv"
)

// offlineACME is a manager with ACME on whose CA is never reached: every
// obtain stops at the listening check (nothing listens on its ports), and
// the next attempt is an hour away.
func offlineACME(t *testing.T) *Manager {
	t.Helper()
	log, _ := testLogger()
	m, err := New(Options{
		DataDir: t.TempDir(), Email: "ops@sprout.test", Directory: "https://127.0.0.1:1/directory",
		ListenHost: "127.0.0.1", HTTPPort: testenv.FreePort(t), TLSPort: testenv.FreePort(t), FirstRetry: time.Hour,
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// TestChangesApplyInOrder: a change (Manage, AddCertificate,
// RemoveCertificate) that computed the domains to ask of the CA applies
// them before another change computes its own, so that the set asked at
// the end is the newest. The first change is held right before applying
// while the second one runs as far as it can.
func TestChangesApplyInOrder(t *testing.T) {
	ca := testenv.NewCA(t, "Intranet Root")
	cert, key := ca.Issue(t, time.Now().Add(time.Hour), "web.sprout.test")
	for _, tc := range []struct {
		name   string
		before func(m *Manager)
		first  func(m *Manager)
		second func(m *Manager) error
	}{
		{
			// Without the order, ACME would be asked for a domain your
			// certificate covers.
			name:   "Manage, then AddCertificate",
			first:  func(m *Manager) { m.Manage([]string{"web.sprout.test"}) },
			second: func(m *Manager) error { _, err := m.AddCertificate(cert, key); return err },
		},
		{
			// Without the order, ACME would go on with a domain no app
			// wants any more.
			name: "RemoveCertificate, then Manage",
			before: func(m *Manager) {
				if _, err := m.AddCertificate(cert, key); err != nil {
					t.Fatal(err)
				}
				m.Manage([]string{"web.sprout.test"})
			},
			first: func(m *Manager) {
				if err := m.RemoveCertificate("web.sprout.test"); err != nil {
					t.Error(err)
				}
			},
			second: func(m *Manager) error { m.Manage(nil); return nil },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := offlineACME(t)
			if tc.before != nil {
				tc.before(m)
			}
			secondDone := make(chan error, 1)
			secondWaits := make(chan struct{}, 1)
			var held atomic.Bool
			m.hooks.changesBusy = func() { secondWaits <- struct{}{} }
			m.hooks.applying = func([]string) {
				if !held.CompareAndSwap(false, true) {
					return // the second change
				}
				go func() { secondDone <- tc.second(m) }()
				select {
				case <-secondWaits: // it waits for this one
				case err := <-secondDone: // it went past this one
					secondDone <- err
				}
			}
			tc.first(m)
			if err := <-secondDone; err != nil {
				t.Fatal(err)
			}
			if got := m.acme.wanted(); len(got) != 0 {
				t.Errorf("ACME is asked for %v, want nothing: an older set was applied last", got)
			}
		})
	}
}

// TestChallengeHintNamesThePorts: a failed validation says which ports
// must reach the proxy, the CA's 80 and 443 forwarded to the proxy's own
// when they differ, and only those of the challenge types on.
func TestChallengeHintNamesThePorts(t *testing.T) {
	problem := acme.Problem{Type: "urn:ietf:params:acme:error:connection", Detail: "Timeout during connect"}
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{HTTPPort: 80, TLSPort: 443}, "and that ports 80 and 443 reach its proxy)"},
		{Options{HTTPPort: 8080, TLSPort: 8443}, "and that ports 80 and 443 reach its proxy, forwarded 80 to 8080 (proxy.http_port) and 443 to 8443 (proxy.https_port))"},
		{Options{HTTPPort: 8080, TLSPort: 443}, "and that ports 80 and 443 reach its proxy, forwarded 80 to 8080 (proxy.http_port))"},
		{Options{HTTPPort: 8080, TLSPort: 8443, DisableHTTP01: true}, "and that port 443 reaches its proxy, forwarded 443 to 8443 (proxy.https_port))"},
	} {
		a := &acmeManager{challenges: challengeAddrs(tc.opts)}
		got := a.explain("web.sprout.test", problem)
		if !strings.HasPrefix(got, "the CA said (connection): Timeout during connect (check that web.sprout.test resolves to this host ") || !strings.HasSuffix(got, tc.want) {
			t.Errorf("%+v: %q, want it to end %q", tc.opts, got, tc.want)
		}
	}
}

// TestNewDefaultsThePorts: with no ports given, the proxy is looked for
// where the CA validates, 80 and 443; ports given are kept.
func TestNewDefaultsThePorts(t *testing.T) {
	log, _ := testLogger()
	for _, tc := range []struct{ in, want [2]int }{{[2]int{0, 0}, [2]int{80, 443}}, {[2]int{8080, 8443}, [2]int{8080, 8443}}} {
		m, err := New(Options{DataDir: t.TempDir(), Email: "ops@sprout.test", HTTPPort: tc.in[0], TLSPort: tc.in[1]}, log)
		if err != nil {
			t.Fatal(err)
		}
		var got [2]int
		for i, c := range m.acme.challenges {
			got[i] = c.port
		}
		if got != tc.want || !slices.ContainsFunc(m.acme.challenges, func(c challengeAddr) bool { return strings.HasPrefix(c.addr, ":") }) {
			t.Errorf("ports %v: challenges at %+v, want %v on every address", tc.in, m.acme.challenges, tc.want)
		}
		m.Close()
	}
}
