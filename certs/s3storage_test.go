package certs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/source"
)

// s3Storage is an S3Storage on a fresh loopback S3 (gofakes3, which
// honours conditional writes as S3 does), with its S3 options.
func s3Storage(t *testing.T) (*S3Storage, *testenv.FakeS3, source.S3Options) {
	t.Helper()
	fake := testenv.S3(t, "certs")
	opts := source.S3Options{Endpoint: fake.URL, PathStyle: true}
	return newS3Storage(t, opts), fake, opts
}

func newS3Storage(t *testing.T, opts source.S3Options) *S3Storage {
	t.Helper()
	s3, err := source.NewS3(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	log, _ := testLogger()
	st, err := NewS3Storage(s3, "s3://certs/env/prod/tls", log)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestS3StorageKeys: certmagic's storage contract over S3: files,
// directories implied by them, listing one level or all, deletes of
// either, and fs.ErrNotExist for what is not there.
func TestS3StorageKeys(t *testing.T) {
	st, fake, _ := s3Storage(t)
	ctx := context.Background()
	for k, v := range map[string]string{
		"certificates/ca/a.test/a.test.crt": "cert a",
		"certificates/ca/a.test/a.test.key": "key a",
		"certificates/ca/b.test/b.test.crt": "cert b",
		"acme/ca/users/ops/ops.json":        "account",
	} {
		if err := st.Store(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := fake.Get(t, "certs", "env/prod/tls/certificates/ca/a.test/a.test.crt"); !ok {
		t.Error("not stored under the prefix")
	}
	if b, err := st.Load(ctx, "certificates/ca/a.test/a.test.key"); err != nil || string(b) != "key a" {
		t.Errorf("Load = %q, %v", b, err)
	}
	if _, err := st.Load(ctx, "certificates/ca/c.test/c.test.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing key: %v, want fs.ErrNotExist", err)
	}
	if !st.Exists(ctx, "certificates/ca") || !st.Exists(ctx, "certificates/ca/a.test/a.test.crt") || st.Exists(ctx, "certificates/c") {
		t.Error("Exists is wrong about a directory, a file or a missing key")
	}
	if info, err := st.Stat(ctx, "certificates/ca/b.test/b.test.crt"); err != nil || !info.IsTerminal || info.Size != 6 || info.Modified.IsZero() {
		t.Errorf("Stat of a file = %+v, %v", info, err)
	}
	if info, err := st.Stat(ctx, "certificates/ca"); err != nil || info.IsTerminal {
		t.Errorf("Stat of a directory = %+v, %v", info, err)
	}
	if _, err := st.Stat(ctx, "certificates/c"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat of a missing key: %v", err)
	}
	list := func(dir string, recursive bool) []string {
		keys, err := st.List(ctx, dir, recursive)
		if err != nil {
			t.Fatalf("List %s: %v", dir, err)
		}
		slices.Sort(keys)
		return keys
	}
	if got, want := list("certificates/ca", false), []string{"certificates/ca/a.test", "certificates/ca/b.test"}; !slices.Equal(got, want) {
		t.Errorf("List one level = %v, want %v", got, want)
	}
	if got, want := list("certificates", true), []string{"certificates/ca", "certificates/ca/a.test", "certificates/ca/a.test/a.test.crt",
		"certificates/ca/a.test/a.test.key", "certificates/ca/b.test", "certificates/ca/b.test/b.test.crt"}; !slices.Equal(got, want) {
		t.Errorf("List recursive = %v, want %v", got, want)
	}
	if got, want := list("", false), []string{"acme", "certificates"}; !slices.Equal(got, want) {
		t.Errorf("List of the root = %v, want %v", got, want)
	}
	if _, err := st.List(ctx, "ocsp", false); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List of a missing directory: %v", err)
	}
	if err := st.Delete(ctx, "certificates/ca/a.test"); err != nil {
		t.Fatal(err)
	}
	if st.Exists(ctx, "certificates/ca/a.test/a.test.key") || !st.Exists(ctx, "certificates/ca/b.test/b.test.crt") {
		t.Error("Delete of a directory removed the wrong keys")
	}
	if err := st.Delete(ctx, "certificates/ca/b.test/b.test.crt"); err != nil || st.Exists(ctx, "certificates/ca/b.test") {
		t.Errorf("Delete of a file: %v", err)
	}
	if err := st.Delete(ctx, "never/there"); err != nil {
		t.Errorf("Delete of a missing key: %v", err)
	}
}

// TestS3LockExcludes has hosts with their own storage on one bucket
// take the same lock over and over: never two at once.
func TestS3LockExcludes(t *testing.T) {
	_, _, opts := s3Storage(t)
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for range 4 {
		st := newS3Storage(t, opts)
		wg.Go(func() {
			for range 3 {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				if err := st.Lock(ctx, "issue_cert_web.test"); err != nil {
					t.Error(err)
					cancel()
					return
				}
				n := inside.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(20 * time.Millisecond)
				inside.Add(-1)
				if err := st.Unlock(ctx, "issue_cert_web.test"); err != nil {
					t.Error(err)
				}
				cancel()
			}
		})
	}
	wg.Wait()
	if m := most.Load(); m != 1 {
		t.Errorf("%d holders at once", m)
	}
}

// TestS3LockWaitsAndTakesOverStale: a waiter waits while the holder keeps
// the lock fresh, and takes it over once the holder stops refreshing it
// (a host that died); the late holder's Unlock then leaves the new
// holder's lock alone. A lock object left by a dead host is taken over
// at once.
func TestS3LockWaitsAndTakesOverStale(t *testing.T) {
	st, fake, opts := s3Storage(t)
	other := newS3Storage(t, opts)
	st.LockTTL, other.LockTTL = 900*time.Millisecond, 900*time.Millisecond
	ctx := context.Background()
	if err := st.Lock(ctx, "renew"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := other.Lock(short, "renew")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("took a lock its holder keeps fresh: %v", err)
	}

	// The holder stalls: it stops refreshing, and its lock expires.
	st.mu.Lock()
	h := st.held["renew"]
	st.mu.Unlock()
	close(h.stop)
	<-h.done
	h.stop, h.done = make(chan struct{}), make(chan struct{})
	close(h.done)
	began := time.Now()
	if err := other.Lock(ctx, "renew"); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(began); waited > 5*time.Second { // TTL, S3's 1 s resolution, a poll
		t.Errorf("took %s to take over a stale lock", waited)
	}
	if err := st.Unlock(ctx, "renew"); err != nil {
		t.Fatal(err)
	}
	body, ok := fake.Get(t, "certs", "env/prod/tls/locks/renew.lock")
	var lb lockBody
	json.Unmarshal(body, &lb)
	if !ok || lb.Owner != other.owner {
		t.Fatalf("the late holder's Unlock removed the new holder's lock: %q", body)
	}
	if err := other.Unlock(ctx, "renew"); err != nil {
		t.Fatal(err)
	}
	if _, ok := fake.Get(t, "certs", "env/prod/tls/locks/renew.lock"); ok {
		t.Error("Unlock left the lock object")
	}

	dead, _ := json.Marshal(lockBody{Owner: "dead-host", TTL: "100ms", Nonce: "x"})
	fake.Put(t, "certs", "env/prod/tls/locks/storage_clean.lock", dead)
	short, cancel = context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := st.Lock(short, "storage_clean"); err != nil {
		t.Fatalf("a dead host's lock was not taken over: %v", err)
	}
	if err := st.Unlock(ctx, "storage_clean"); err != nil {
		t.Fatal(err)
	}
}

// TestS3LockStalenessIsS3sClock: whether a lock is stale is judged by
// how long ago S3 says it was written, whatever time its holder's clock
// told. A lock just written by a holder whose clock is behind (its expiry,
// as earlier versions wrote it, already past) is not taken over; one
// whose holder's clock is ahead (expiry an hour away) but which nobody
// wrote for longer than its TTL is.
func TestS3LockStalenessIsS3sClock(t *testing.T) {
	st, fake, _ := s3Storage(t)
	ctx := context.Background()
	behind := fmt.Sprintf(`{"owner":"slow-clock","expires":%q,"ttl":"1m0s","nonce":"a"}`, time.Now().Add(-10*time.Minute).Format(time.RFC3339Nano))
	fake.Put(t, "certs", "env/prod/tls/locks/behind.lock", []byte(behind))
	if ok, err := st.TryLock(ctx, "behind"); ok || err != nil {
		t.Errorf("took over a lock written a moment ago by a host whose clock is behind: %v, %v", ok, err)
	}

	ahead := fmt.Sprintf(`{"owner":"fast-clock","expires":%q,"ttl":"200ms","nonce":"b"}`, time.Now().Add(time.Hour).Format(time.RFC3339Nano))
	fake.Put(t, "certs", "env/prod/tls/locks/ahead.lock", []byte(ahead))
	short, cancel := context.WithTimeout(ctx, 6*time.Second)
	defer cancel()
	if err := st.Lock(short, "ahead"); err != nil {
		t.Fatalf("a lock nobody refreshed past its TTL was not taken over (its dead holder's clock is ahead): %v", err)
	}
	if err := st.Unlock(ctx, "ahead"); err != nil {
		t.Fatal(err)
	}
}

// hookedObjects calls beforeDelete before each delete it passes on.
type hookedObjects struct {
	Objects
	beforeDelete func()
}

func (h hookedObjects) Delete(ctx context.Context, obj source.Object) error {
	h.beforeDelete()
	return h.Objects.Delete(ctx, obj)
}

func (h hookedObjects) DeleteIfMatch(ctx context.Context, obj source.Object, etag string) error {
	h.beforeDelete()
	return h.Objects.DeleteIfMatch(ctx, obj, etag)
}

// TestS3UnlockIsConditional: a lock another host writes between Unlock's
// read and its delete (a take-over) is not deleted; a store that refuses
// conditional deletes (501) gets a plain one, and the lock is released.
func TestS3UnlockIsConditional(t *testing.T) {
	fake := testenv.S3(t, "certs")
	s3, err := source.NewS3(context.Background(), source.S3Options{Endpoint: fake.URL, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	log, _ := testLogger()
	const key = "env/prod/tls/locks/issue.lock"
	var takeOver atomic.Bool
	objects := hookedObjects{Objects: s3, beforeDelete: func() {
		if takeOver.Load() {
			b, _ := json.Marshal(lockBody{Owner: "other-host", TTL: "1m0s", Nonce: "new"})
			fake.Put(t, "certs", key, b)
		}
	}}
	st, err := NewS3Storage(objects, "s3://certs/env/prod/tls/", log)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	takeOver.Store(true)
	if err := st.Lock(ctx, "issue"); err != nil {
		t.Fatal(err)
	}
	if err := st.Unlock(ctx, "issue"); err != nil {
		t.Fatal(err)
	}
	body, ok := fake.Get(t, "certs", key)
	if !ok || !strings.Contains(string(body), "other-host") {
		t.Fatalf("Unlock deleted the lock another host had taken over: %q", body)
	}

	takeOver.Store(false)
	fake.RefuseConditionalDelete.Store(true)
	st2 := newS3Storage(t, source.S3Options{Endpoint: fake.URL, PathStyle: true})
	if err := st2.Lock(ctx, "plain"); err != nil {
		t.Fatal(err)
	}
	if err := st2.Unlock(ctx, "plain"); err != nil {
		t.Fatalf("Unlock on a store without conditional deletes: %v", err)
	}
	if _, ok := fake.Get(t, "certs", "env/prod/tls/locks/plain.lock"); ok {
		t.Error("the lock was left on a store that refuses conditional deletes")
	}
}

// TestSharedS3StorageObtainsOnce: two hosts of an environment share
// tls.storage and want the same domain at the same moment. One takes the
// lock and obtains the certificate from Pebble; the other waits, then
// finds it in S3: both serve the same certificate, and the CA issued one.
// The CA reaches only the first host's frontend, which answers for the
// other through the shared storage as well.
func TestSharedS3StorageObtainsOnce(t *testing.T) {
	_, fake, s3opts := s3Storage(t)
	lazy := &lazyCerts{}
	f := serve(t, lazy)
	p := testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: f.httpPort, TLSPort: f.tlsPort})
	domain := "shared.sprout.test"
	p.Host(t, domain, "127.0.0.1")
	var managers []*Manager
	var logs []*testenv.SyncBuffer
	for range 2 {
		opts := acmeOptions(t, p, f)
		opts.Storage, opts.S3 = "s3://certs/env/prod/tls/", s3opts
		log, buf := testLogger()
		m, err := New(opts, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
		managers, logs = append(managers, m), append(logs, buf)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range logs {
				t.Logf("manager %d log:\n%s", i, l)
			}
		}
	})
	lazy.m.Store(managers[0])
	for _, m := range managers {
		m.Manage([]string{domain})
	}
	serials := make([]string, len(managers))
	testenv.Eventually(t, 90*time.Second, func() error {
		for i, m := range managers {
			c := m.acme.current(domain)
			if c == nil {
				return fmt.Errorf("manager %d has no certificate yet: %+v", i, m.List())
			}
			serials[i] = c.Leaf.SerialNumber.String()
		}
		return nil
	})
	if serials[0] != serials[1] {
		t.Errorf("the hosts serve different certificates (serials %s and %s): each asked the CA", serials[0], serials[1])
	}
	obtained := 0
	for _, l := range logs {
		obtained += strings.Count(l.String(), `"msg":"certificate obtained"`)
	}
	if obtained != 1 {
		t.Errorf("%d hosts obtained the certificate, want 1", obtained)
	}
	if _, ok := fake.Get(t, "certs", "env/prod/tls/locks/issue_cert_"+domain+".lock"); ok {
		t.Error("the issuance lock was left behind")
	}
}

// TestLockBodyKeepsOlderAgentsOff: an agent from before the TTL field judges
// a lock by its expires alone; a lock written now must not look stale to it
// (it would take it over and ask the CA too).
func TestLockBodyKeepsOlderAgentsOff(t *testing.T) {
	s := &S3Storage{owner: "host-a", LockTTL: time.Minute}
	var older struct {
		Expires time.Time `json:"expires"`
	}
	if err := json.Unmarshal(s.lockBody(), &older); err != nil || !time.Now().Add(50*time.Second).Before(older.Expires) {
		t.Errorf("lock body %s: an older agent reads expires %v (%v), want about a minute ahead", s.lockBody(), older.Expires, err)
	}
}
