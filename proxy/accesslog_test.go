package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The hand-built line must be the object slog's JSONHandler writes for the
// same record, so that log pipelines see one format whichever way a line
// was written.
func TestAccessLineMatchesSlog(t *testing.T) {
	start := time.Now()
	req := &request{method: "GET", uri: "/a/b?token=secret", host: "Example.com:8080", remote: "10.0.0.1:5555", start: start}
	var viaSlog, direct bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&viaSlog, nil)).With("component", "proxy")
	s := newService("web", Options{AccessLog: true}, logger)
	s.logRequest(req, 503, 1234, "172.17.0.2:8080", start.Add(1500*time.Microsecond))
	s = newService("web", Options{AccessLog: true, AccessLogOutput: &direct}, logger)
	s.logRequest(req, 503, 1234, "172.17.0.2:8080", start.Add(1500*time.Microsecond))

	var a, b map[string]any
	if err := json.Unmarshal(viaSlog.Bytes(), &a); err != nil {
		t.Fatalf("slog line %q: %v", viaSlog.String(), err)
	}
	if err := json.Unmarshal(direct.Bytes(), &b); err != nil {
		t.Fatalf("direct line %q: %v", direct.String(), err)
	}
	if _, err := time.Parse(time.RFC3339Nano, b["time"].(string)); err != nil {
		t.Errorf("time %q: %v", b["time"], err)
	}
	delete(a, "time")
	delete(b, "time")
	if !reflect.DeepEqual(a, b) {
		t.Errorf("direct line\n%v\nslog's\n%v", b, a)
	}
	if b["path"] != "/a/b" {
		t.Errorf("path = %v: the query must not be logged", b["path"])
	}
	if strings.Count(direct.String(), "\n") != 1 || !strings.HasSuffix(direct.String(), "}\n") {
		t.Errorf("not one line: %q", direct.String())
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", `quote " back \ slash`, "new\nline\r\ttab", "\x00\x1f\x7f", "<script>&", "héllo 世界", "bad \xff\xfe utf8", "sep\u2028\u2029", "/%2e%2e/"} {
		checkJSONString(t, s)
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "a\"b", "\xff", "\u2028", "x\ny"} {
		f.Add(s)
	}
	f.Fuzz(checkJSONString)
}

// checkJSONString: the output is encoding/json's own, byte for byte (HTML
// characters and U+2028/9 escaped, invalid UTF-8 replaced), and carries no
// raw line break.
func checkJSONString(t *testing.T, s string) {
	out := appendJSONString(nil, s)
	var got, want string
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%q -> %s: %v", s, out, err)
	}
	ref, _ := json.Marshal(s)
	json.Unmarshal(ref, &want)
	if got != want {
		t.Fatalf("%q -> %s decodes to %q; encoding/json's %s to %q", s, out, got, ref, want)
	}
	if !bytes.Equal(out, ref) {
		t.Fatalf("%q -> %s; encoding/json writes %s", s, out, ref)
	}
	if bytes.ContainsAny(out, "\n\r") {
		t.Fatalf("%q -> %s has a raw line break", s, out)
	}
}

// BenchmarkAccessLog compares the line built by hand with slog's.
func BenchmarkAccessLog(b *testing.B) {
	req := &request{method: "GET", uri: "/", host: "127.0.0.1:19080", remote: "127.0.0.1:35994", start: time.Now()}
	for _, c := range []struct {
		name string
		out  io.Writer
	}{{"slog", nil}, {"direct", io.Discard}} {
		b.Run(c.name, func(b *testing.B) {
			s := newService("web", Options{AccessLog: true, AccessLogOutput: c.out}, slog.New(slog.NewJSONHandler(io.Discard, nil)).With("component", "proxy"))
			b.ReportAllocs()
			for b.Loop() {
				s.logRequest(req, 200, 100, "172.17.0.25:8080", time.Now())
			}
		})
	}
}
