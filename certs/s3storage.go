package certs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/sprout-paas/sprout/source"
)

// Objects is what S3Storage needs of S3; *source.S3 has it.
type Objects interface {
	GetIfChanged(ctx context.Context, obj source.Object, etag string) (body []byte, newETag string, changed bool, err error)
	GetWithAge(ctx context.Context, obj source.Object) (body []byte, etag string, age time.Duration, err error)
	Put(ctx context.Context, obj source.Object, body []byte, contentType string) (string, error)
	PutIfMatch(ctx context.Context, obj source.Object, body []byte, contentType, etag string) (string, error)
	Delete(ctx context.Context, obj source.Object) error
	DeleteIfMatch(ctx context.Context, obj source.Object, etag string) error
	List(ctx context.Context, prefix source.Object) ([]source.Listed, error)
}

var _ Objects = (*source.S3)(nil)

// Lock timing: a held lock object says its holder's LockTTL, and its
// holder writes it afresh every LockTTL/3; a lock not written for longer
// than its TTL belongs to a holder that died, and the next taker replaces
// it. How long ago it was written is S3's word (its Date against the
// object's Last-Modified), never a host's clock, so clocks that disagree
// between hosts cannot let two hold it; both times are whole seconds,
// hence lockClockResolution on top. Waiters look again every lockPoll.
const (
	DefaultLockTTL      = time.Minute
	lockPoll            = time.Second
	lockClockResolution = time.Second
	locksDir            = "locks/"
)

// S3Storage keeps certmagic's certificates, account keys and challenge
// tokens under an S3 prefix, so that the hosts of an environment share
// them: one host obtains a certificate and every host serves it, and the
// CA sees one order, not one per host. Its Locker takes a lock with a
// conditional write (If-None-Match: *) of an object under locks/, and
// takes over a lock whose holder stopped refreshing it only with a write
// conditional on the ETag it read (If-Match), so two hosts never both
// take it.
type S3Storage struct {
	objects Objects
	prefix  source.Object // Key ends in "/" or is empty
	owner   string
	log     *slog.Logger
	// LockTTL is how long a lock holds without a refresh; tests shorten it.
	LockTTL time.Duration

	mu   sync.Mutex
	held map[string]*heldLock
}

// heldLock is a lock this storage holds, kept fresh by a goroutine until
// Unlock.
type heldLock struct {
	obj  source.Object
	etag string // of the lock object as last written; guarded by S3Storage.mu
	stop chan struct{}
	done chan struct{}
}

// lockBody is a lock object's content.
type lockBody struct {
	Owner string `json:"owner"`
	// TTL is how long the lock holds after each write (a Go duration).
	TTL string `json:"ttl"`
	// Expires is the writer's clock plus TTL: agents before TTL judge a
	// lock by it alone (read as zero, a lock without it looks stale to
	// them), so it is still written while hosts of one environment are
	// upgraded one by one. Never read.
	Expires time.Time `json:"expires"`
	// Nonce makes every write's content, and so its ETag, unique.
	Nonce string `json:"nonce"`
}

// stale tells whether a lock last written age ago (by S3's clock) was
// left by a holder that stopped refreshing it: older than its TTL, or
// than this storage's when it says none.
func (s *S3Storage) stale(cur lockBody, age time.Duration) bool {
	ttl := s.LockTTL
	if d, err := time.ParseDuration(cur.TTL); err == nil && d > 0 {
		ttl = d
	}
	return age > ttl+lockClockResolution
}

var (
	_ certmagic.Storage   = (*S3Storage)(nil)
	_ certmagic.TryLocker = (*S3Storage)(nil)
)

// NewS3Storage returns the storage under prefixURL (s3://bucket/prefix/).
func NewS3Storage(objects Objects, prefixURL string, log *slog.Logger) (*S3Storage, error) {
	prefix, err := source.ParseS3URL(prefixURL)
	if err != nil {
		return nil, fmt.Errorf("%w: tls.storage %q is not s3://bucket/prefix/", ErrInvalid, prefixURL)
	}
	if prefix.Key != "" && !strings.HasSuffix(prefix.Key, "/") {
		prefix.Key += "/"
	}
	host, _ := os.Hostname()
	return &S3Storage{
		objects: objects, prefix: prefix, owner: host + "-" + randomHex(6), log: log,
		LockTTL: DefaultLockTTL, held: map[string]*heldLock{},
	}, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *S3Storage) object(key string) source.Object {
	return source.Object{Bucket: s.prefix.Bucket, Key: s.prefix.Key + key}
}

// String names the storage in certmagic's logs.
func (s *S3Storage) String() string { return "S3Storage:" + s.prefix.String() }

// Store writes value at key, replacing what is there.
func (s *S3Storage) Store(ctx context.Context, key string, value []byte) error {
	_, err := s.objects.Put(ctx, s.object(key), value, "application/octet-stream")
	return err
}

// Load reads the value at key; fs.ErrNotExist when there is none.
func (s *S3Storage) Load(ctx context.Context, key string) ([]byte, error) {
	body, _, _, err := s.objects.GetIfChanged(ctx, s.object(key), "")
	if errors.Is(err, source.ErrNotFound) {
		return nil, fmt.Errorf("%s: %w", s.object(key), fs.ErrNotExist)
	}
	return body, err
}

// Delete removes key and, when it is a directory, everything under it.
func (s *S3Storage) Delete(ctx context.Context, key string) error {
	under, err := s.objects.List(ctx, s.object(key+"/"))
	if err != nil {
		return err
	}
	if err := s.objects.Delete(ctx, s.object(key)); err != nil {
		return err
	}
	for _, o := range under {
		if err := s.objects.Delete(ctx, source.Object{Bucket: s.prefix.Bucket, Key: o.Key}); err != nil {
			return err
		}
	}
	return nil
}

// Exists tells whether key is a file or a directory.
func (s *S3Storage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// Stat describes key: a file with its size and time, or a directory
// (a prefix of other keys); fs.ErrNotExist when it is neither.
func (s *S3Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	listed, err := s.objects.List(ctx, s.object(key))
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	full := s.object(key).Key
	dir := false
	for _, o := range listed {
		switch {
		case o.Key == full:
			return certmagic.KeyInfo{Key: key, Modified: o.LastModified, Size: o.Size, IsTerminal: true}, nil
		case strings.HasPrefix(o.Key, full+"/"):
			dir = true
		}
	}
	if dir {
		return certmagic.KeyInfo{Key: key}, nil
	}
	return certmagic.KeyInfo{}, fmt.Errorf("%s: %w", s.object(key), fs.ErrNotExist)
}

// List returns the keys under dir: its direct children (files and
// directories), or with recursive every file and directory below it.
func (s *S3Storage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	base := strings.TrimSuffix(dir, "/")
	pre := s.object(base + "/")
	if base == "" {
		pre = s.object("")
	}
	listed, err := s.objects.List(ctx, pre)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	add := func(k string) {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	for _, o := range listed {
		rel := strings.TrimPrefix(o.Key, pre.Key)
		parts := strings.Split(rel, "/")
		if !recursive {
			parts = parts[:1]
		}
		for i := range parts {
			add(strings.TrimPrefix(base+"/"+strings.Join(parts[:i+1], "/"), "/"))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: %w", pre, fs.ErrNotExist)
	}
	return out, nil
}

// Lock takes the named lock, waiting while another holder keeps it fresh.
func (s *S3Storage) Lock(ctx context.Context, name string) error {
	for {
		ok, err := s.TryLock(ctx, name)
		if err != nil || ok {
			return err
		}
		t := time.NewTimer(lockPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// TryLock takes the named lock if it is free or stale, and reports
// whether it did.
func (s *S3Storage) TryLock(ctx context.Context, name string) (bool, error) {
	obj := s.object(locksDir + name + ".lock")
	etag, err := s.objects.PutIfMatch(ctx, obj, s.lockBody(), "application/json", "")
	if err == nil {
		s.hold(name, obj, etag)
		return true, nil
	}
	if !errors.Is(err, source.ErrPreconditionFailed) {
		return false, fmt.Errorf("take lock %s: %w", name, err)
	}
	// Someone holds it: take it over only if its holder stopped
	// refreshing it, and only if nobody wrote it since it was read.
	body, etag, age, err := s.objects.GetWithAge(ctx, obj)
	if errors.Is(err, source.ErrNotFound) {
		return false, nil // released meanwhile: try again at once next round
	}
	if err != nil {
		return false, fmt.Errorf("read lock %s: %w", name, err)
	}
	var cur lockBody
	json.Unmarshal(body, &cur) // an unreadable lock is judged by this storage's TTL
	if !s.stale(cur, age) {
		return false, nil
	}
	newETag, err := s.objects.PutIfMatch(ctx, obj, s.lockBody(), "application/json", etag)
	switch {
	case err == nil:
		s.log.Warn("took over a stale certificate lock", "lock", obj.String(), "owner", cur.Owner, "unwritten_for", age.String())
		s.hold(name, obj, newETag)
		return true, nil
	case errors.Is(err, source.ErrPreconditionFailed), errors.Is(err, source.ErrNotFound):
		return false, nil // another taker won
	}
	return false, fmt.Errorf("take over lock %s: %w", name, err)
}

func (s *S3Storage) lockBody() []byte {
	b, _ := json.Marshal(lockBody{Owner: s.owner, TTL: s.LockTTL.String(), Expires: time.Now().Add(s.LockTTL), Nonce: randomHex(8)})
	return b
}

// hold records a lock taken and keeps it fresh until Unlock.
func (s *S3Storage) hold(name string, obj source.Object, etag string) {
	h := &heldLock{obj: obj, etag: etag, stop: make(chan struct{}), done: make(chan struct{})}
	s.mu.Lock()
	s.held[name] = h
	s.mu.Unlock()
	go s.refresh(h)
}

// refresh writes a fresh expiry into a held lock every LockTTL/3, each
// write conditional on the last, so that a lock taken over (after this
// host stalled past its expiry) is noticed and not overwritten.
func (s *S3Storage) refresh(h *heldLock) {
	defer close(h.done)
	t := time.NewTicker(s.LockTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		etag := h.etag
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), s.LockTTL/3)
		newETag, err := s.objects.PutIfMatch(ctx, h.obj, s.lockBody(), "application/json", etag)
		cancel()
		switch {
		case err == nil:
			s.mu.Lock()
			h.etag = newETag
			s.mu.Unlock()
		case errors.Is(err, source.ErrPreconditionFailed), errors.Is(err, source.ErrNotFound):
			s.log.Error("a certificate lock was taken over by another host while this one held it; two hosts may now ask the CA for the same certificate", "lock", h.obj.String())
			return
		default:
			s.log.Warn("cannot refresh a certificate lock; trying again", "lock", h.obj.String(), "error", err)
		}
	}
}

// Unlock releases a lock this storage holds: it stops refreshing it and
// deletes it, unless another host took it over meanwhile: the delete is
// conditional on the ETag last written (If-Match). A store that refuses
// conditional deletes gets a plain one after the ETag is read and
// compared, which leaves a moment for a take-over to be undone.
func (s *S3Storage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	h := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if h == nil {
		return fmt.Errorf("lock %s is not held by this host", name)
	}
	close(h.stop)
	<-h.done
	s.mu.Lock()
	etag := h.etag
	s.mu.Unlock()
	_, cur, _, err := s.objects.GetIfChanged(ctx, h.obj, "")
	switch {
	case errors.Is(err, source.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("release lock %s: %w", name, err)
	case cur != etag:
		return nil // taken over: it is the new holder's now
	}
	err = s.objects.DeleteIfMatch(ctx, h.obj, etag)
	switch {
	case err == nil, errors.Is(err, source.ErrPreconditionFailed), errors.Is(err, source.ErrNotFound):
		return nil // deleted, or taken over or gone since it was read
	case errors.Is(err, source.ErrNotImplemented):
		return s.objects.Delete(ctx, h.obj)
	}
	return fmt.Errorf("release lock %s: %w", name, err)
}

// Held lists the locks this storage holds, for tests and diagnostics.
func (s *S3Storage) Held() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for name := range s.held {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}
