package testenv

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// CurlHTTP2 runs curl with HTTP/2 against https://host:port/ on 127.0.0.1,
// trusting the CA in caFile, with extra arguments before the URL, and
// returns what it printed. A curl that is missing or built without HTTP/2
// skips the test locally and fails it under CI.
func CurlHTTP2(t testing.TB, caFile, host string, port int, args ...string) string {
	t.Helper()
	curl, err := exec.LookPath("curl")
	if err != nil {
		Missing(t, "curl is not installed", "apt-get install curl (scripts/ensure-test-deps.sh does)")
	}
	if v, _ := exec.Command(curl, "-V").Output(); !strings.Contains(string(v), "HTTP2") {
		Missing(t, "this curl has no HTTP/2 support", "install Debian's curl")
	}
	cmd := append([]string{"--http2", "-sS", "--cacert", caFile, "--resolve", fmt.Sprintf("%s:%d:127.0.0.1", host, port)}, args...)
	out, err := exec.Command(curl, append(cmd, fmt.Sprintf("https://%s:%d/", host, port))...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	return string(out)
}
