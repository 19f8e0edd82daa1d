package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestKeptLogsAreBoundedAndFiltered(t *testing.T) {
	a := &Agent{cfg: Config{DataDir: t.TempDir(), LogBytesPerApp: 100}}
	dir := logsDir(a.cfg, "web")
	os.MkdirAll(dir, 0o700)
	for i, label := range []string{"v1", "v2", "v3"} {
		p := filepath.Join(dir, label+".log")
		os.WriteFile(p, bytes.Repeat([]byte("x"), 60), 0o600)
		mod := time.Now().Add(time.Duration(i-3) * time.Minute)
		os.Chtimes(p, mod, mod)
	}
	a.trimLogs("web")
	left, _ := os.ReadDir(dir)
	if len(left) != 1 || left[0].Name() != "v3.log" {
		t.Errorf("kept %v, want only the newest", left)
	}

	old := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	recent := time.Now().UTC().Format(time.RFC3339Nano)
	in := old + " one\n" + old + " two\n" + recent + " three\n" + recent + " four\n"
	var out bytes.Buffer
	copyLogLines(strings.NewReader(in), &out, time.Now().Add(-time.Minute), 0)
	if got := out.String(); strings.Contains(got, "one") || !strings.Contains(got, "three") || !strings.Contains(got, "four") {
		t.Errorf("since: %q", got)
	}
	out.Reset()
	copyLogLines(strings.NewReader(in), &out, time.Time{}, 1)
	if got := out.String(); got != recent+" four\n" {
		t.Errorf("tail 1: %q", got)
	}
}
