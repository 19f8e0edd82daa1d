package source_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/bundle"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/source"
)

func newS3(t *testing.T) (*testenv.FakeS3, *source.S3) {
	t.Helper()
	fake := testenv.S3(t, "bundles")
	s, err := source.NewS3(context.Background(), source.S3Options{Endpoint: fake.URL, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	return fake, s
}

// TestS3 runs the real SDK client against a real S3 wire protocol on
// loopback: versions are never overwritten, fetches are bounded and
// checksummed, conditional reads use the ETag, and each failure is one
// sentence naming the bucket, the key and the cause.
func TestS3(t *testing.T) {
	_, s := newS3(t)
	ctx := context.Background()
	obj := source.Object{Bucket: "bundles", Key: "web/v1.zip"}
	body := bytes.Repeat([]byte("bundle "), 1000)
	etag, err := s.PutNew(ctx, obj, bytes.NewReader(body), int64(len(body)))
	if err != nil || etag == "" {
		t.Fatalf("put: %q %v", etag, err)
	}
	if _, err := s.PutNew(ctx, obj, bytes.NewReader(body), int64(len(body))); !errors.Is(err, source.ErrExists) || !strings.Contains(err.Error(), "s3://bundles/web/v1.zip already exists") {
		t.Errorf("second put: %v", err)
	}
	var got bytes.Buffer
	f, err := s.Fetch(ctx, obj, &got, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	if !bytes.Equal(got.Bytes(), body) || f.SHA256 != hex.EncodeToString(sum[:]) || f.ETag != etag || f.Bytes != int64(len(body)) || f.Ref != "s3://bundles/web/v1.zip" {
		t.Errorf("fetched %+v", f)
	}
	if _, err := s.Fetch(ctx, obj, &bytes.Buffer{}, 100); !errors.Is(err, source.ErrTooLarge) {
		t.Errorf("over the cap: %v", err)
	}

	for _, tc := range []struct {
		obj  source.Object
		want string
	}{
		{source.Object{Bucket: "bundles", Key: "web/v9.zip"}, "s3://bundles/web/v9.zip: no such object in bucket bundles (check the key)"},
		{source.Object{Bucket: "nobucket", Key: "a.zip"}, "s3://nobucket/a.zip: bucket nobucket does not exist"},
		{source.Object{Bucket: "denied", Key: "a.zip"}, "s3://denied/a.zip: access denied (AccessDenied)"},
		{source.Object{Bucket: "elsewhere", Key: "a.zip"}, "s3://elsewhere/a.zip: bucket elsewhere is in another region than us-east-1; set s3.region"},
	} {
		_, err := s.Fetch(ctx, tc.obj, &bytes.Buffer{}, 1<<20)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v\nwant %q", tc.obj, err, tc.want)
		}
	}

	// Manifests: a conditional GET with the ETag answers 304 until the
	// object changes.
	m := source.Object{Bucket: "bundles", Key: "envs/web/current.json"}
	if _, err := s.Put(ctx, m, []byte(`{"label":"v1"}`), "application/json"); err != nil {
		t.Fatal(err)
	}
	b, tag, changed, err := s.GetIfChanged(ctx, m, "")
	if err != nil || !changed || string(b) != `{"label":"v1"}` {
		t.Fatalf("first read: %q %v %v", b, changed, err)
	}
	if _, tag2, changed, err := s.GetIfChanged(ctx, m, tag); err != nil || changed || tag2 != tag {
		t.Errorf("unchanged read: %v %v", changed, err)
	}
	if _, err := s.Put(ctx, m, []byte(`{"label":"v2"}`), "application/json"); err != nil {
		t.Fatal(err)
	}
	if b, _, changed, err := s.GetIfChanged(ctx, m, tag); err != nil || !changed || string(b) != `{"label":"v2"}` {
		t.Errorf("changed read: %q %v %v", b, changed, err)
	}
}

// TestPutIfMatch writes with S3's conditional writes: If-None-Match: *
// creates only, If-Match writes only over the ETag that was read, and a
// write that lost is ErrPreconditionFailed and changes nothing. gofakes3
// honours both headers on PutObject as S3 does (412 PreconditionFailed),
// so this is the real wire exchange.
func TestPutIfMatch(t *testing.T) {
	_, s := newS3(t)
	ctx := context.Background()
	obj := source.Object{Bucket: "bundles", Key: "envs/web/current.json"}
	lost := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, source.ErrPreconditionFailed) || !strings.Contains(err.Error(), "s3://bundles/envs/web/current.json changed since it was read") {
			t.Errorf("%s: %v, want ErrPreconditionFailed naming the object", what, err)
		}
	}
	first, err := s.PutIfMatch(ctx, obj, []byte(`{"n":1}`), "application/json", "")
	if err != nil || first == "" {
		t.Fatalf("create: %q %v", first, err)
	}
	_, err = s.PutIfMatch(ctx, obj, []byte(`{"n":2}`), "application/json", "")
	lost("create over an existing object", err)
	second, err := s.PutIfMatch(ctx, obj, []byte(`{"n":2}`), "application/json", first)
	if err != nil || second == first {
		t.Fatalf("write over the ETag read: %q %v", second, err)
	}
	_, err = s.PutIfMatch(ctx, obj, []byte(`{"n":3}`), "application/json", first)
	lost("write over a stale ETag", err)
	if b, tag, _, err := s.GetIfChanged(ctx, obj, ""); err != nil || string(b) != `{"n":2}` || tag != second {
		t.Errorf("after the lost writes: %q %s %v, want {\"n\":2} %s", b, tag, err, second)
	}
}

// TestDeleteIfMatch: a delete conditional on the ETag read removes the
// object only if nobody wrote it since; a stale ETag, an object gone and a
// store that refuses conditional deletes each delete nothing and say so.
func TestDeleteIfMatch(t *testing.T) {
	fake, s := newS3(t)
	ctx := context.Background()
	obj := source.Object{Bucket: "bundles", Key: "locks/a.lock"}
	first, err := s.Put(ctx, obj, []byte("one"), "text/plain")
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.Put(ctx, obj, []byte("two"), "text/plain")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteIfMatch(ctx, obj, first); !errors.Is(err, source.ErrPreconditionFailed) {
		t.Errorf("delete over a stale ETag: %v, want ErrPreconditionFailed", err)
	}
	fake.RefuseConditionalDelete.Store(true)
	if err := s.DeleteIfMatch(ctx, obj, second); !errors.Is(err, source.ErrNotImplemented) || !strings.Contains(err.Error(), "does not support") {
		t.Errorf("a store without conditional deletes: %v, want ErrNotImplemented", err)
	}
	fake.RefuseConditionalDelete.Store(false)
	if _, ok := fake.Get(t, "bundles", obj.Key); !ok {
		t.Fatal("a refused delete deleted")
	}
	if err := s.DeleteIfMatch(ctx, obj, second); err != nil {
		t.Fatalf("delete over the ETag read: %v", err)
	}
	if _, ok := fake.Get(t, "bundles", obj.Key); ok {
		t.Error("not deleted")
	}
	if err := s.DeleteIfMatch(ctx, obj, second); !errors.Is(err, source.ErrNotFound) {
		t.Errorf("delete of an object gone: %v, want ErrNotFound", err)
	}
}

// TestGetWithAge: an object's age is S3's time since it was written,
// whole seconds.
func TestGetWithAge(t *testing.T) {
	_, s := newS3(t)
	ctx := context.Background()
	obj := source.Object{Bucket: "bundles", Key: "locks/b.lock"}
	etag, err := s.Put(ctx, obj, []byte("held"), "text/plain")
	if err != nil {
		t.Fatal(err)
	}
	body, tag, age, err := s.GetWithAge(ctx, obj)
	if err != nil || string(body) != "held" || tag != etag || age < 0 || age > 2*time.Second {
		t.Fatalf("fresh: %q %s %s %v", body, tag, age, err)
	}
	time.Sleep(2100 * time.Millisecond) // Last-Modified and Date count whole seconds
	if _, _, age, err := s.GetWithAge(ctx, obj); err != nil || age < time.Second {
		t.Errorf("2 s later: %s %v, want at least 1 s", age, err)
	}
}

// addKey is an Update change that adds key to a JSON object of keys.
func addKey(key string) func([]byte) ([]byte, error) {
	return func(old []byte) ([]byte, error) {
		keys := map[string]bool{}
		if old != nil {
			if err := json.Unmarshal(old, &keys); err != nil {
				return nil, err
			}
		}
		keys[key] = true
		return json.Marshal(keys)
	}
}

// TestUpdate interleaves writers by hand: a writer who read the object
// before another wrote it loses its first write, reads again and keeps
// both changes; a writer who loses every time gives up after
// UpdateAttempts with ErrPreconditionFailed and writes nothing.
func TestUpdate(t *testing.T) {
	_, s := newS3(t)
	ctx := context.Background()
	obj := source.Object{Bucket: "bundles", Key: "envs/web/current.json"}

	// b's whole update runs between a's first read and a's first write.
	calls := 0
	a := func(old []byte) ([]byte, error) {
		if calls++; calls == 1 {
			if _, err := s.Update(ctx, obj, "application/json", addKey("b")); err != nil {
				t.Errorf("b: %v", err)
			}
		}
		return addKey("a")(old)
	}
	etag, err := s.Update(ctx, obj, "application/json", a)
	if err != nil {
		t.Fatalf("a: %v", err)
	}
	b, tag, _, err := s.GetIfChanged(ctx, obj, "")
	if err != nil || string(b) != `{"a":true,"b":true}` || tag != etag || calls != 2 {
		t.Errorf("after a and b: %s (ETag %s, a wrote %s), a's change ran %d times: %v; want both keys, twice", b, tag, etag, calls, err)
	}

	// A rival writes each time between the read and the write.
	calls = 0
	loser := func(old []byte) ([]byte, error) {
		calls++
		if _, err := s.Put(ctx, obj, fmt.Appendf(nil, `{"rival":%d}`, calls), "application/json"); err != nil {
			t.Errorf("rival: %v", err)
		}
		return addKey("loser")(nil)
	}
	_, err = s.Update(ctx, obj, "application/json", loser)
	if !errors.Is(err, source.ErrPreconditionFailed) || calls != source.UpdateAttempts {
		t.Errorf("the loser: %v after %d attempts, want ErrPreconditionFailed after %d", err, calls, source.UpdateAttempts)
	}
	if b, _, _, _ := s.GetIfChanged(ctx, obj, ""); string(b) != fmt.Sprintf(`{"rival":%d}`, source.UpdateAttempts) {
		t.Errorf("after the loser gave up: %s, want the rival's last write", b)
	}

	// An error from the change ends the update at once.
	calls = 0
	refuse := errors.New("refused")
	if _, err := s.Update(ctx, obj, "application/json", func([]byte) ([]byte, error) { calls++; return nil, refuse }); !errors.Is(err, refuse) || calls != 1 {
		t.Errorf("a refusing change: %v after %d calls", err, calls)
	}
}

func TestParse(t *testing.T) {
	g, err := source.ParseGit("https://bot:s3cr3t@git.example.com/team/app.git#release/1.2")
	if err != nil {
		t.Fatal(err)
	}
	if g.String() != "https://git.example.com/team/app.git#release/1.2" || strings.Contains(g.String(), "s3cr3t") {
		t.Errorf("git ref = %s", g)
	}
	if err := source.Check("https://host/repo.git#" + strings.Repeat("r", 200)); err != nil {
		t.Errorf("200-byte ref: %v", err)
	}
	for _, bad := range []string{"https://host/repo.git#" + strings.Repeat("r", 201), "https://host/repo.git#--upload-pack=x", "https://host/repo.git#a..b", "ftp://host/x", "s3://", "s3:///key", "./local.zip"} {
		if err := source.Check(bad); !errors.Is(err, source.ErrInvalid) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if !source.IsRemote("s3://b/k") || !source.IsRemote("https://h/r.git") || source.IsRemote("app.zip") {
		t.Error("IsRemote")
	}
}

// TestGit fetches branches, tags and commits of a real repository with
// the real git client, shallowly, and packs the tree without .git.
func TestGit(t *testing.T) {
	repo := t.TempDir()
	git := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@e", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@e")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	git("init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(repo, "Dockerfile"), []byte("FROM scratch\n"), 0o644)
	git("add", ".")
	git("commit", "-qm", "one")
	first := git("rev-parse", "HEAD")
	git("tag", "v1")
	os.WriteFile(filepath.Join(repo, "two.txt"), []byte("2"), 0o644)
	git("add", ".")
	git("commit", "-qm", "two")
	second := git("rev-parse", "HEAD")

	f := &source.Fetcher{WorkDir: t.TempDir()}
	for ref, want := range map[string]string{"main": second, "v1": first, first: first, "": second} {
		var buf bytes.Buffer
		url := "file://" + repo
		if ref != "" {
			url += "#" + ref
		}
		got, err := f.Fetch(context.Background(), url, &buf, 1<<20, func(string) {})
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if got.Commit != want {
			t.Errorf("%s: commit %s, want %s", ref, got.Commit, want)
		}
		dst := t.TempDir()
		arch := filepath.Join(t.TempDir(), "b.tgz")
		os.WriteFile(arch, buf.Bytes(), 0o644)
		res, err := bundle.UnpackFile(arch, dst, bundle.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(res.Root, ".git")); err == nil {
			t.Errorf("%s: .git was packed", ref)
		}
		_, err = os.Stat(filepath.Join(res.Root, "two.txt"))
		if (want == second) != (err == nil) {
			t.Errorf("%s: two.txt present = %v", ref, err == nil)
		}
	}
	_, err := f.Fetch(context.Background(), "file://"+repo+"#nope", &bytes.Buffer{}, 1<<20, func(string) {})
	if err == nil || !strings.Contains(err.Error(), "git fetch file://"+repo+"#nope") {
		t.Errorf("missing ref: %v", err)
	}
	if _, err := f.Fetch(context.Background(), "file://"+repo, &bytes.Buffer{}, 100, func(string) {}); !errors.Is(err, source.ErrTooLarge) {
		t.Errorf("over the cap: %v", err)
	}
}

func TestManifest(t *testing.T) {
	m, err := source.ParseManifest([]byte(`{"app": "web", "label": "v7", "bundle": "web/v7.zip", "env": {"A": "1"}, "port": 8080}`))
	if err != nil {
		t.Fatal(err)
	}
	if ref, err := m.BundleRef("s3://fleet/envs/web/current.json"); err != nil || ref != "s3://fleet/web/v7.zip" {
		t.Errorf("relative bundle = %q, %v", ref, err)
	}
	m.Bundle = "https://git.example.com/web.git#v7"
	if ref, _ := m.BundleRef("s3://fleet/x.json"); ref != m.Bundle {
		t.Errorf("git bundle = %q", ref)
	}
	m.Bundle = "file:///etc"
	if _, err := m.BundleRef("s3://fleet/x.json"); !errors.Is(err, source.ErrInvalid) {
		t.Errorf("local repository accepted: %v", err)
	}
	back, err := source.ParseManifest(m.Marshal())
	if err != nil || back.Label != "v7" || back.Env["A"] != "1" || back.Port != 8080 {
		t.Errorf("round trip: %+v %v", back, err)
	}
	for body, want := range map[string]string{
		`{"label": "v1"}`:                               "no bundle",
		`{"bundle": "x.zip"}`:                           "no label",
		`{"label": "v1", "bundle": "x", "lable": 1}`:    `unknown field "lable"`,
		`{"label": "v1", "bundle": "x", "port": 70000}`: "not a port",
		`not json`: "not valid",
	} {
		if _, err := source.ParseManifest([]byte(body)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
}

// TestList lists the objects under a prefix, in key order, each with the
// ETag its PUT returned, and nothing outside the prefix.
func TestList(t *testing.T) {
	_, s := newS3(t)
	ctx := context.Background()
	tags := map[string]string{}
	for _, key := range []string{"envs/prod/hosts/b.json", "envs/prod/hosts/a.json", "envs/prod/rollout.json", "envs/staging/hosts/a.json"} {
		etag, err := s.Put(ctx, source.Object{Bucket: "bundles", Key: key}, []byte(key), "application/json")
		if err != nil {
			t.Fatal(err)
		}
		tags[key] = etag
	}
	got, err := s.List(ctx, source.Object{Bucket: "bundles", Key: "envs/prod/hosts/"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"envs/prod/hosts/a.json", "envs/prod/hosts/b.json"}
	if len(got) != len(want) {
		t.Fatalf("listed %+v, want %v", got, want)
	}
	for i, o := range got {
		if o.Key != want[i] || o.ETag != tags[o.Key] || o.Size != int64(len(o.Key)) || o.LastModified.IsZero() {
			t.Errorf("listed %+v, want key %s with ETag %s", o, want[i], tags[want[i]])
		}
	}
	if got, err := s.List(ctx, source.Object{Bucket: "bundles", Key: "envs/none/"}); err != nil || len(got) != 0 {
		t.Errorf("an empty prefix: %v %v", got, err)
	}
	if _, err := s.List(ctx, source.Object{Bucket: "nobucket", Key: "envs/"}); err == nil || !strings.Contains(err.Error(), "bucket nobucket does not exist") {
		t.Errorf("a missing bucket: %v", err)
	}
}
