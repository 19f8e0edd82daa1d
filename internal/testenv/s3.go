package testenv

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// FakeS3 is an in-process server speaking S3's wire protocol (gofakes3)
// on loopback, with two buckets that fail as real S3 does: "denied"
// answers 403 AccessDenied, "elsewhere" 301 PermanentRedirect (a bucket
// in another region). It honours S3's conditional writes: a PutObject
// with If-Match or If-None-Match: * that finds the object changed answers
// 412 PreconditionFailed and writes nothing; so does a DeleteObject with
// If-Match, as S3 does (gofakes3 itself ignores that header), unless
// RefuseConditionalDelete makes it answer 501 NotImplemented as some
// S3-compatible stores do.
type FakeS3 struct {
	URL     string
	backend *s3mem.Backend
	// RefuseConditionalDelete: a DeleteObject with If-Match answers 501.
	RefuseConditionalDelete atomic.Bool
	// writes makes a conditional delete's check and delete one step
	// against other deletes and writes If-Match.
	writes sync.Mutex
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
	f := &FakeS3{backend: be}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bucket, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if r.Method == http.MethodDelete || r.Header.Get("If-Match") != "" {
			f.writes.Lock()
			defer f.writes.Unlock()
		}
		if r.Method == http.MethodDelete && r.Header.Get("If-Match") != "" && !f.deleteIfMatch(w, bucket, key, r.Header.Get("If-Match")) {
			return
		}
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
	f.URL = fmt.Sprintf("http://127.0.0.1:%d", port)
	return f
}

// deleteIfMatch answers a DeleteObject with If-Match as S3 does when the
// object is gone (404) or was written since (412), and reports whether
// the delete goes ahead. f.writes is held.
func (f *FakeS3) deleteIfMatch(w http.ResponseWriter, bucket, key, ifMatch string) bool {
	if f.RefuseConditionalDelete.Load() {
		s3Error(w, http.StatusNotImplemented, "NotImplemented", "A header you provided implies functionality that is not implemented")
		return false
	}
	obj, err := f.backend.HeadObject(bucket, key)
	if err != nil {
		s3Error(w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return false
	}
	if ifMatch != "*" && strings.Trim(ifMatch, `"`) != hex.EncodeToString(obj.Hash) {
		s3Error(w, http.StatusPreconditionFailed, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
		return false
	}
	return true
}

// Put stores an object through the backend, written now, with no
// checksum: an object the SDK wrote (which keeps its checksum) is
// replaced with the SDK.
func (f *FakeS3) Put(t testing.TB, bucket, key string, body []byte) {
	t.Helper()
	meta := map[string]string{"Content-Type": "application/octet-stream", "Last-Modified": time.Now().UTC().Format(http.TimeFormat)}
	if _, err := f.backend.PutObject(bucket, key, meta, bytes.NewReader(body), int64(len(body)), nil); err != nil {
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
