package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/testenv"
)

// TestCertsThroughTheAgent: the agent keeps a certificate you bring
// (sprout certs add) owner-only in its data dir, serves an app by that
// domain over HTTPS with it, and lists it again after a restart; a tls
// setting it cannot use stops it at start, naming the key.
func TestCertsThroughTheAgent(t *testing.T) {
	httpPort, httpsPort := testenv.FreePort(t), testenv.FreePort(t)
	a := startAgent(t, fmt.Sprintf("SPROUT_PROXY_HTTP_PORT=%d", httpPort), fmt.Sprintf("SPROUT_PROXY_HTTPS_PORT=%d", httpsPort))
	dir := t.TempDir()
	ca := testenv.NewCA(t, "Intranet Root")
	c, k := ca.Issue(t, time.Now().Add(30*24*time.Hour), "intranet.example")
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(certFile, c, 0o644)
	os.WriteFile(keyFile, k, 0o600)
	out := a.mustSprout("certs", "add", "--domain", "intranet.example", "--cert", certFile, "--key", keyFile)
	if !strings.HasPrefix(out, "certificate intranet.example added") {
		t.Errorf("certs add: %q", out)
	}

	// Served: an app by that domain, over HTTPS with your certificate.
	a.mustSprout("deploy", zipDir(t, testenv.Bundle(t, "")), "--app", testenv.Name("intra"), "--label", "v1", "--domain", "intranet.example")
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpsPort), &tls.Config{ServerName: "intranet.example", RootCAs: ca.Pool, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatalf("TLS with your certificate: %v", err)
	}
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: intranet.example\r\nConnection: close\r\n\r\n")
	reply, _ := io.ReadAll(conn)
	conn.Close()
	if !strings.HasPrefix(string(reply), "HTTP/1.1 200") || !strings.Contains(string(reply), "v1 ") {
		t.Errorf("HTTPS by your certificate:\n%s", reply)
	}

	a.kill(syscall.SIGTERM)
	a.start()
	out = a.mustSprout("certs")
	if !strings.Contains(out, "intranet.example  intranet.example  yours") || !strings.Contains(out, "valid") {
		t.Errorf("certs after a restart:\n%s", out)
	}
	st, err := os.Stat(filepath.Join(a.dataDir, "tls", "yours", "intranet.example", "key.pem"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("stored key: %v, %v", st, err)
	}

	bad := exec.Command(a.bin, "agent")
	bad.Env = append(a.env, "SPROUT_TLS_ACME_EMAIL=ops at example")
	b, err := bad.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "config tls.acme.email") {
		t.Errorf("an agent with a bad tls.acme.email: %v\n%s", err, b)
	}
}
