package cli

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/source"
)

const manifestKey = "envs/web/current.json"

// publishVia points `sprout publish` at fake through a handler that sees
// each request to the manifest before fake does (what another publisher
// does in between), and returns a function that runs publish with args.
func publishVia(t *testing.T, fake *testenv.FakeS3, manifest func(w http.ResponseWriter, r *http.Request, next http.Handler)) func(args ...string) error {
	t.Helper()
	u, err := url.Parse(fake.URL)
	if err != nil {
		t.Fatal(err)
	}
	next := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fleet/"+manifestKey {
			manifest(w, r, next)
			return
		}
		next.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Setenv("SPROUT_S3_ENDPOINT", srv.URL)
	t.Setenv("SPROUT_S3_PATH_STYLE", "true")
	fake.Put(t, "fleet", "web/v1.tar.gz", []byte("bundle"))
	return func(args ...string) error {
		root := NewRootCommand(&bytes.Buffer{}, &bytes.Buffer{})
		root.SetArgs(append([]string{"publish", "--manifest", "s3://fleet/" + manifestKey, "--app", "web", "--bundle", "s3://fleet/web/v1.tar.gz"}, args...))
		return root.ExecuteContext(context.Background())
	}
}

func readManifest(t *testing.T, fake *testenv.FakeS3) *source.Manifest {
	t.Helper()
	body, ok := fake.Get(t, "fleet", manifestKey)
	if !ok {
		t.Fatalf("no manifest: %s", body)
	}
	m, err := source.ParseManifest(body)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestPublishConcurrently runs two publishers that both read the manifest
// before either writes it: the one that writes second loses its
// conditional write, reads again, and both environment properties land.
func TestPublishConcurrently(t *testing.T) {
	fake := testenv.S3(t, "fleet")
	bothRead := make(chan struct{})
	var reads atomic.Int32
	publish := publishVia(t, fake, func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		switch r.Method {
		case http.MethodGet:
			next.ServeHTTP(w, r)
			if reads.Add(1) == 2 {
				close(bothRead)
			}
		case http.MethodPut:
			select {
			case <-bothRead:
			case <-time.After(30 * time.Second):
				http.Error(w, "the other publisher never read the manifest", http.StatusInternalServerError)
				return
			}
			next.ServeHTTP(w, r)
		default:
			next.ServeHTTP(w, r)
		}
	})
	fake.Put(t, "fleet", manifestKey, (&source.Manifest{App: "web", Label: "v1", Bundle: "web/v1.tar.gz", Env: map[string]string{"BASE": "1"}}).Marshal())

	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, env := range []string{"LOG_LEVEL=debug", "FEATURE=on"} {
		wg.Go(func() { errs[i] = publish("--label", "v1", "--env", env) })
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("publishers: %v", errs)
	}
	if m := readManifest(t, fake); m.Env["BASE"] != "1" || m.Env["LOG_LEVEL"] != "debug" || m.Env["FEATURE"] != "on" || len(m.Env) != 3 {
		t.Errorf("env = %v, want BASE, LOG_LEVEL and FEATURE: a publisher's change was lost", m.Env)
	}
	if n := reads.Load(); n != 3 {
		t.Errorf("the manifest was read %d times by the two publishers, want 3 (the loser reads again)", n)
	}
}

// TestPublishKeepsLosing has another publisher write the manifest between
// each read and write of this one: publish gives up after
// source.UpdateAttempts tries, says why and what to do, and the other
// publisher's manifest stays.
func TestPublishKeepsLosing(t *testing.T) {
	fake := testenv.S3(t, "fleet")
	rival, err := source.NewS3(context.Background(), source.S3Options{Endpoint: fake.URL, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	var writes atomic.Int32
	publish := publishVia(t, fake, func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		if r.Method == http.MethodPut {
			n := writes.Add(1)
			m := &source.Manifest{App: "web", Label: "rival", Bundle: "web/v1.tar.gz", Port: int(8000 + n)}
			if _, err := rival.Put(r.Context(), source.Object{Bucket: "fleet", Key: manifestKey}, m.Marshal(), "application/json"); err != nil {
				t.Errorf("rival: %v", err)
			}
		}
		next.ServeHTTP(w, r)
	})
	err = publish("--label", "v2", "--env", "LOG_LEVEL=debug")
	want := "someone else published to s3://fleet/envs/web/current.json meanwhile, 5 times in a row; v2 was not published: try again"
	if err == nil || err.Error() != want {
		t.Errorf("err = %v\nwant %s", err, want)
	}
	if n := writes.Load(); n != source.UpdateAttempts {
		t.Errorf("%d writes tried, want %d", n, source.UpdateAttempts)
	}
	if m := readManifest(t, fake); m.Label != "rival" || m.Port != 8000+source.UpdateAttempts || m.Env != nil {
		t.Errorf("manifest = %+v, want the rival's last", m)
	}
}
