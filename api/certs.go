package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/sprout-paas/sprout/certs"
)

// Certificates is what the API needs of the agent's certificate manager;
// *certs.Manager has it.
type Certificates interface {
	List() []certs.Info
	AddCertificate(certPEM, keyPEM []byte) (certs.Info, error)
	RemoveCertificate(name string) error
}

var _ Certificates = (*certs.Manager)(nil)

// CertRequest is a certificate you bring: the chain (leaf first) and its
// private key, in PEM.
type CertRequest struct {
	CertPEM string `json:"cert_pem"`
	KeyPEM  string `json:"key_pem"`
}

// maxCertRequest bounds a certificate upload: a chain and a key are a few
// KiB.
const maxCertRequest = 1 << 20

// errNoCertificates answers an agent that was given no certificate
// manager.
var errNoCertificates = errors.New("this agent was started without its certificate manager (see its log)")

// SetCertificates makes the server answer /v1/certs from c.
func (s *Server) SetCertificates(c Certificates) { s.certs = c }

func (s *Server) routeCerts(p string) {
	s.mux.HandleFunc("GET "+p+"/certs", s.listCerts)
	s.mux.HandleFunc("POST "+p+"/certs", s.addCert)
	s.mux.HandleFunc("DELETE "+p+"/certs/{name}", s.removeCert)
}

func (s *Server) listCerts(w http.ResponseWriter, r *http.Request) {
	if s.certs == nil {
		writeJSON(w, http.StatusNotImplemented, ErrorBody{Error: errNoCertificates.Error()})
		return
	}
	writeJSON(w, 200, s.certs.List())
}

func (s *Server) addCert(w http.ResponseWriter, r *http.Request) {
	if s.certs == nil {
		writeJSON(w, http.StatusNotImplemented, ErrorBody{Error: errNoCertificates.Error()})
		return
	}
	var req CertRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxCertRequest)).Decode(&req); err != nil {
		writeError(w, fmt.Errorf("%w: %v", certs.ErrInvalid, err))
		return
	}
	info, err := s.certs.AddCertificate([]byte(req.CertPEM), []byte(req.KeyPEM))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, info)
}

func (s *Server) removeCert(w http.ResponseWriter, r *http.Request) {
	if s.certs == nil {
		writeJSON(w, http.StatusNotImplemented, ErrorBody{Error: errNoCertificates.Error()})
		return
	}
	if err := s.certs.RemoveCertificate(r.PathValue("name")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// Certs lists the agent's certificates.
func (c *Client) Certs(ctx context.Context) ([]certs.Info, error) {
	var out []certs.Info
	err := c.get(ctx, "/certs", nil, &out)
	return out, olderAgent(err)
}

// ErrNoCerts means the agent predates certificates.
var ErrNoCerts = errors.New("this agent predates `sprout certs`: upgrade it (sprout on its host) to this CLI's version")

// olderAgent tells an agent without the certificate routes, whose mux
// answers 404 in plain text, from a certificate not found.
func olderAgent(err error) error {
	var se *StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound && strings.Contains(se.Message, "404 page not found") {
		return ErrNoCerts
	}
	return err
}

// AddCert hands the agent a certificate you bring.
func (c *Client) AddCert(ctx context.Context, req CertRequest) (certs.Info, error) {
	var out certs.Info
	err := c.post(ctx, "/certs", req, &out)
	return out, olderAgent(err)
}

// RemoveCert deletes one of your certificates by name.
func (c *Client) RemoveCert(ctx context.Context, name string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, c.url("/certs/"+url.PathEscape(name), nil), nil)
	if err != nil {
		return err
	}
	resp, err := c.do(req)
	if err != nil {
		return olderAgent(err)
	}
	return resp.Body.Close()
}
