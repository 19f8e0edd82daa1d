package cli

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/sprout-paas/sprout/handover"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/transport"
)

func TestAgentDialer(t *testing.T) {
	t.Setenv("SPROUT_SOCKET", "/tmp/x.sock")
	d, err := agentDialer(flagsFor(t))
	if err != nil || d.String() != "unix:///tmp/x.sock" {
		t.Errorf("no host: %v %v", d, err)
	}
	t.Setenv("SPROUT_HOST", "ssh://deploy@web-1:2222")
	t.Setenv("SPROUT_SSH_COMMAND", "ssh -i /keys/ci")
	d, err = agentDialer(flagsFor(t))
	if s, ok := d.(*transport.SSH); err != nil || !ok || s.String() != "deploy@web-1:2222" || strings.Join(s.Command, " ") != "ssh -i /keys/ci" {
		t.Errorf("SPROUT_HOST: %#v %v", d, err)
	}
	d, err = agentDialer(flagsFor(t, "--host", "unix:///run/other.sock"))
	if err != nil || d.String() != "unix:///run/other.sock" {
		t.Errorf("--host over SPROUT_HOST: %v %v", d, err)
	}
	if _, err := agentDialer(flagsFor(t, "--host", "ssh://web-1", "--socket", "/tmp/y.sock")); err == nil {
		t.Error("--host with --socket accepted")
	}
}

// TestSocketGroup: owner-only by default; socket_group opens the socket
// to a group (mode 0660).
func TestSocketGroup(t *testing.T) {
	g := testenv.PrimaryGroup(t)
	for _, tc := range []struct {
		group string
		mode  os.FileMode
	}{{"", 0o600}, {g.Name, 0o660}, {g.Gid, 0o660}} {
		sock := filepath.Join(t.TempDir(), "sprout.sock")
		ln, err := listenSocket(firstProcess(t), sock, tc.group)
		if err != nil {
			t.Fatalf("group %q: %v", tc.group, err)
		}
		st, err := os.Stat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != tc.mode || strconv.Itoa(int(st.Sys().(*syscall.Stat_t).Gid)) != g.Gid {
			t.Errorf("group %q: mode %v gid %d", tc.group, st.Mode(), st.Sys().(*syscall.Stat_t).Gid)
		}
		ln.Close()
	}
	if _, err := listenSocket(firstProcess(t), filepath.Join(t.TempDir(), "sprout.sock"), "no-such-group-here"); err == nil || !strings.Contains(err.Error(), "config socket_group") {
		t.Errorf("unknown group: %v", err)
	}
}

func TestUploadProgress(t *testing.T) {
	var out bytes.Buffer
	p := newPrinter(&out)
	if _, err := io.Copy(io.Discard, p.upload(strings.NewReader("abc"), 3)); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "==> upload") || !strings.Contains(s, "3B sent in") {
		t.Errorf("upload progress:\n%s", s)
	}
}

// firstProcess is the handover set of an agent no upgrade started.
func firstProcess(t *testing.T) *handover.Set {
	t.Helper()
	hs, err := handover.Inherit()
	if err != nil {
		t.Fatal(err)
	}
	return hs
}
