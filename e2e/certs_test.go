package e2e

import (
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
// (sprout certs add) owner-only in its data dir and lists it again after a
// restart; a tls setting it cannot use stops it at start, naming the key.
func TestCertsThroughTheAgent(t *testing.T) {
	a := startAgent(t)
	dir := t.TempDir()
	c, k := testenv.NewCA(t, "Intranet Root").Issue(t, time.Now().Add(30*24*time.Hour), "intranet.example")
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(certFile, c, 0o644)
	os.WriteFile(keyFile, k, 0o600)
	out := a.mustSprout("certs", "add", "--domain", "intranet.example", "--cert", certFile, "--key", keyFile)
	if !strings.HasPrefix(out, "certificate intranet.example added") {
		t.Errorf("certs add: %q", out)
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
