package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/certs"
	"github.com/sprout-paas/sprout/internal/testenv"
)

// TestCertsAPI adds, lists and removes a certificate you bring through
// the API, and maps the manager's refusals to 400 and 404 with its words.
func TestCertsAPI(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := certs.New(certs.Options{DataDir: t.TempDir()}, log)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(nil, "test", log)
	s.SetCertificates(m)
	c := serve(t, s)
	ctx := context.Background()

	ca := testenv.NewCA(t, "Intranet Root")
	cert, key := ca.Issue(t, time.Now().Add(time.Hour), "*.intranet.example")
	info, err := c.AddCert(ctx, CertRequest{CertPEM: string(cert), KeyPEM: string(key)})
	if err != nil || info.Name != "_wildcard.intranet.example" || info.Issuer != certs.IssuerYours {
		t.Fatalf("AddCert = %+v, %v", info, err)
	}
	list, err := c.Certs(ctx)
	if err != nil || len(list) != 1 || list[0].Domains[0] != "*.intranet.example" || list[0].Status != certs.StatusValid {
		t.Fatalf("Certs = %+v, %v", list, err)
	}
	_, otherKey := ca.Issue(t, time.Now().Add(time.Hour), "other.example")
	var se *StatusError
	if _, err := c.AddCert(ctx, CertRequest{CertPEM: string(cert), KeyPEM: string(otherKey)}); !errors.As(err, &se) || se.Code != http.StatusBadRequest || !strings.Contains(se.Message, "private key does not match") {
		t.Errorf("a mismatched key: %v", err)
	}
	if err := c.RemoveCert(ctx, "nothing.example"); !errors.As(err, &se) || se.Code != http.StatusNotFound || !strings.Contains(se.Message, "none of yours") {
		t.Errorf("removing what is not there: %v", err)
	}
	if err := c.RemoveCert(ctx, "*.intranet.example"); err != nil {
		t.Fatal(err)
	}
	if list, _ := c.Certs(ctx); len(list) != 0 {
		t.Errorf("after removal: %+v", list)
	}

	// An agent that predates certificates says so.
	old := &Server{version: "0.9", mux: http.NewServeMux()}
	if _, err := serve(t, old).Certs(ctx); !errors.Is(err, ErrNoCerts) {
		t.Errorf("an older agent: %v", err)
	}
}
