package testenv

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// FakeS3 is an in-process server speaking S3's wire protocol (gofakes3)
// on loopback, with two buckets that fail as real S3 does: "denied"
// answers 403 AccessDenied, "elsewhere" 301 PermanentRedirect (a bucket
// in another region). It honours S3's conditional writes: a PutObject
// with If-Match or If-None-Match: * that finds the object changed answers
// 412 PreconditionFailed and writes nothing.
type FakeS3 struct {
	URL     string
	backend *s3mem.Backend
}

// S3 starts a FakeS3 for one test, with the buckets named in buckets.
// It sets AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the test, as
// the SDK needs credentials to sign.
func S3(t testing.TB, buckets ...string) *FakeS3 {
	t.Helper()
	be := s3mem.New()
	for _, b := range buckets {
		if err := be.CreateBucket(b); err != nil {
			t.Fatal(err)
		}
	}
	faker := gofakes3.New(be, gofakes3.WithIntegrityCheck(true))
	inner := faker.Server()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bucket, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		switch bucket {
		case "denied":
			s3Error(w, http.StatusForbidden, "AccessDenied", "Access Denied")
			return
		case "elsewhere":
			s3Error(w, http.StatusMovedPermanently, "PermanentRedirect", "The bucket you are attempting to access must be addressed using the specified endpoint.")
			return
		}
		inner.ServeHTTP(w, r)
	})
	// Listen on every address: containers (the user-data test) reach it
	// through the host's network.
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: h}}
	srv.Start()
	t.Cleanup(srv.Close)
	t.Setenv("AWS_ACCESS_KEY_ID", "sprout-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "sprout-test-secret")
	t.Setenv("AWS_REGION", "us-east-1")
	port := ln.Addr().(*net.TCPAddr).Port
	return &FakeS3{URL: fmt.Sprintf("http://127.0.0.1:%d", port), backend: be}
}

// Put stores an object through the backend, with no checksum: an object
// the SDK wrote (which keeps its checksum) is replaced with the SDK.
func (f *FakeS3) Put(t testing.TB, bucket, key string, body []byte) {
	t.Helper()
	if _, err := f.backend.PutObject(bucket, key, map[string]string{"Content-Type": "application/octet-stream"}, bytes.NewReader(body), int64(len(body)), nil); err != nil {
		t.Fatal(err)
	}
}

// Get reads an object; ok is false when it does not exist.
func (f *FakeS3) Get(t testing.TB, bucket, key string) (body []byte, ok bool) {
	t.Helper()
	resp, err := http.Get(f.URL + "/" + bucket + "/" + key)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return b.Bytes(), resp.StatusCode == 200
}

func s3Error(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message><RequestId>sprout-test</RequestId></Error>`, code, msg)
}
