package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/certs"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// TestCertsCommands drives `sprout certs`, `certs add` and `certs rm`
// against the API server and a real certificate manager: a key file
// others can read and a certificate for another domain are refused before
// anything is sent; a wildcard is added, listed and removed.
func TestCertsCommands(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := certs.New(certs.Options{DataDir: t.TempDir()}, log)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(nil, "test", log)
	srv.SetCertificates(m)
	fakeAgent(t, srv.ServeHTTP)

	dir := t.TempDir()
	c, k := testenv.NewCA(t, "Intranet Root").Issue(t, time.Now().Add(90*24*time.Hour), "*.apps.example", "apps.example")
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(certFile, c, 0o644)
	os.WriteFile(keyFile, k, 0o644)

	_, err = run(t, "certs", "add", "--domain", "web.apps.example", "--cert", certFile, "--key", keyFile)
	if err == nil || !strings.Contains(err.Error(), "chmod 600 "+keyFile) {
		t.Errorf("a key file with mode 0644: %v", err)
	}
	os.Chmod(keyFile, 0o600)
	_, err = run(t, "certs", "add", "--domain", "a.b.apps.example", "--cert", certFile, "--key", keyFile)
	if err == nil || !strings.Contains(err.Error(), "is for *.apps.example, apps.example, not a.b.apps.example") {
		t.Errorf("a certificate for another domain: %v", err)
	}
	if n := len(m.List()); n != 0 {
		t.Fatalf("a refused certificate reached the agent: %d listed", n)
	}
	for _, domain := range []string{"web.apps.example", "*.apps.example"} {
		out, err := run(t, "certs", "add", "--domain", domain, "--cert", certFile, "--key", keyFile)
		if err != nil || !strings.HasPrefix(out, "certificate _wildcard.apps.example added: serves *.apps.example, apps.example until ") {
			t.Errorf("certs add --domain %s: %q, %v", domain, out, err)
		}
	}

	out, err := run(t, "certs")
	if err != nil || !strings.Contains(out, "_wildcard.apps.example  *.apps.example, apps.example  yours") || !strings.Contains(out, "(in 89d)") || !strings.Contains(out, "valid") {
		t.Errorf("certs:\n%s%v", out, err)
	}
	out, err = run(t, "certs", "--json")
	var list []certs.Info
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0].Managed {
		t.Errorf("certs --json: %s %v", out, err)
	}
	if out, err := run(t, "certs", "rm", "*.apps.example"); err != nil || !strings.HasPrefix(out, "certificate _wildcard.apps.example removed") {
		t.Errorf("certs rm: %q, %v", out, err)
	}
	if _, err := run(t, "certs", "rm", "*.apps.example"); err == nil || !strings.Contains(err.Error(), "none of yours") {
		t.Errorf("certs rm again: %v", err)
	}
	if out, _ := run(t, "certs"); !strings.HasPrefix(out, "no certificates") {
		t.Errorf("certs after rm: %q", out)
	}
}

// TestCertsTable compares the table, with an ACME certificate failing to
// be obtained and what to do, with its golden file.
func TestCertsTable(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	list := []certs.Info{
		{Name: "_wildcard.intranet.example", Domains: []string{"*.intranet.example"}, Issuer: certs.IssuerYours, Status: certs.StatusValid,
			NotBefore: now.AddDate(0, -1, 0), NotAfter: now.AddDate(0, 11, 0), LastRenewal: now.AddDate(0, 0, -30)},
		{Name: "shop.example.com", Domains: []string{"shop.example.com"}, Managed: true, Status: certs.StatusFailing,
			Error:     "the CA said (connection): 203.0.113.9: Fetching http://shop.example.com/.well-known/acme-challenge/x: Connection refused (check that shop.example.com resolves to this host and that ports 80 and 443 reach its proxy)",
			NextRetry: now.Add(4 * time.Minute)},
		{Name: "web.example.com", Domains: []string{"web.example.com"}, Issuer: "Let's Encrypt R11", Managed: true, Status: certs.StatusValid,
			NotBefore: now.Add(-24 * time.Hour), NotAfter: now.Add(89 * 24 * time.Hour), LastRenewal: now.Add(-24 * time.Hour)},
	}
	var out bytes.Buffer
	printCerts(&out, list, now)
	golden(t, "certs.golden", out.Bytes())
}
