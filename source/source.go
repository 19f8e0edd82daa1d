// Package source fetches the application bundles an agent pulls itself:
// objects in S3 (or an S3-compatible store) and commits of git
// repositories. Errors name what was asked for and why it failed, in one
// sentence, and never carry credentials.
package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
)

// Errors a caller can tell apart.
var (
	ErrInvalid  = errors.New("invalid source")
	ErrNotFound = errors.New("not found")
	ErrDenied   = errors.New("access denied")
	ErrTooLarge = errors.New("too large")
	ErrExists   = errors.New("already exists")
	// ErrPreconditionFailed says a conditional write lost: the object
	// changed (or appeared) since it was read, so nothing was written.
	ErrPreconditionFailed = errors.New("precondition failed")
	// ErrNotImplemented says the store (an S3-compatible one) does not
	// support a request, such as a conditional delete.
	ErrNotImplemented = errors.New("not implemented by the store")
)

// IsRemote tells whether a deploy argument names a remote source rather
// than a local file.
func IsRemote(ref string) bool {
	return strings.HasPrefix(ref, "s3://") || isGitURL(ref)
}

// Fetcher fetches bundles from any source it knows.
type Fetcher struct {
	S3Options S3Options
	// WorkDir holds git checkouts while they are packed.
	WorkDir string

	once  sync.Once
	s3    *S3
	s3err error
}

// S3 returns the S3 client, made on first use.
func (f *Fetcher) S3(ctx context.Context) (*S3, error) {
	f.once.Do(func() { f.s3, f.s3err = NewS3(context.WithoutCancel(ctx), f.S3Options) })
	return f.s3, f.s3err
}

// Check parses ref without fetching it.
func Check(ref string) error {
	switch {
	case strings.HasPrefix(ref, "s3://"):
		_, err := ParseS3URL(ref)
		return err
	case isGitURL(ref):
		_, err := ParseGit(ref)
		return err
	}
	return fmt.Errorf("%w: %q is neither s3://bucket/key nor a git URL (https://host/repo.git#ref)", ErrInvalid, ref)
}

// Fetch writes the bundle ref names to w (a git commit is packed as a
// tar archive), at most max bytes.
func (f *Fetcher) Fetch(ctx context.Context, ref string, w io.Writer, max int64, progress func(string)) (Fetched, error) {
	if err := Check(ref); err != nil {
		return Fetched{}, err
	}
	if strings.HasPrefix(ref, "s3://") {
		obj, _ := ParseS3URL(ref)
		s, err := f.S3(ctx)
		if err != nil {
			return Fetched{}, err
		}
		progress("fetching " + obj.String())
		return s.Fetch(ctx, obj, w, max)
	}
	g, _ := ParseGit(ref)
	progress("cloning " + g.String() + " (shallow)")
	return FetchGit(ctx, g, f.WorkDir, w, max)
}

// RedactRef returns ref without credentials, for printing.
func RedactRef(ref string) string {
	if isGitURL(ref) {
		if g, err := ParseGit(ref); err == nil {
			return g.String()
		}
		return redact(ref)
	}
	return ref
}
