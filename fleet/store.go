package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sprout-paas/sprout/source"
)

// Objects is what the store needs of S3; *source.S3 has it.
type Objects interface {
	GetIfChanged(ctx context.Context, obj source.Object, etag string) (body []byte, newETag string, changed bool, err error)
	Put(ctx context.Context, obj source.Object, body []byte, contentType string) (string, error)
	PutIfMatch(ctx context.Context, obj source.Object, body []byte, contentType, etag string) (string, error)
	PutNew(ctx context.Context, obj source.Object, body io.ReadSeeker, size int64) (string, error)
	List(ctx context.Context, prefix source.Object) ([]source.Listed, error)
}

var _ Objects = (*source.S3)(nil)

// swapAttempts bounds how often a write of rollout.json is computed again
// after losing to another writer. Rivals compute the same function, so
// the second attempt usually finds nothing left to do.
const swapAttempts = 5

// reportFetches bounds the report GETs in flight at once.
const reportFetches = 8

// Store reads and writes an environment's objects under its prefix. It
// remembers the last rollout.json and reports it read, with their ETags,
// so that polls are conditional GETs. It is safe for concurrent use.
type Store struct {
	objects Objects
	env     source.Object
	// Now is the clock; tests set it.
	Now func() time.Time

	mu      sync.Mutex
	current *Rollout
	etag    string
	reports map[string]cachedReport // by key
}

type cachedReport struct {
	etag   string
	report HostReport
	err    error
}

// Open returns the store of the environment at envURL
// (s3://bucket/envs/prod/).
func Open(objects Objects, envURL string) (*Store, error) {
	env, err := source.ParseS3URL(envURL)
	if err != nil {
		return nil, invalid("the environment %q is not an S3 prefix: use s3://bucket/envs/NAME/", envURL)
	}
	if env.Key != "" && !strings.HasSuffix(env.Key, "/") {
		env.Key += "/"
	}
	return &Store{objects: objects, env: env, Now: time.Now, reports: map[string]cachedReport{}}, nil
}

// URL is the environment's prefix, s3://bucket/envs/prod/.
func (s *Store) URL() string { return s.env.String() }

func (s *Store) object(key string) source.Object {
	return source.Object{Bucket: s.env.Bucket, Key: s.env.Key + key}
}

const (
	rolloutKey  = "rollout.json"
	historyDir  = "rollouts/"
	hostsDir    = "hosts/"
	versionsDir = "versions/"
	probesDir   = "probes/"
	jsonType    = "application/json"
)

// Rollout reads rollout.json with a conditional GET on the ETag last
// read, and returns it with its ETag; nil and "" when the environment has
// none. The document is shared: do not change it.
func (s *Store) Rollout(ctx context.Context) (*Rollout, string, error) {
	s.mu.Lock()
	cur, etag := s.current, s.etag
	s.mu.Unlock()
	obj := s.object(rolloutKey)
	body, newETag, changed, err := s.objects.GetIfChanged(ctx, obj, etag)
	switch {
	case errors.Is(err, source.ErrNotFound):
		s.remember(nil, "")
		return nil, "", nil
	case err != nil:
		return nil, "", err
	case !changed:
		return cur, etag, nil
	}
	r, err := decode[Rollout](body, obj)
	if err != nil {
		return nil, "", err
	}
	s.remember(r, newETag)
	return r, newETag, nil
}

func (s *Store) remember(r *Rollout, etag string) {
	s.mu.Lock()
	s.current, s.etag = r, etag
	s.mu.Unlock()
}

// swap reads rollout.json, computes its successor with next (nil for no
// change), and writes it only over what it read; a terminal successor is
// archived. When another writer got there first it reads and computes
// again. It returns the document as it now is, and whether this call
// wrote it.
func (s *Store) swap(ctx context.Context, next func(cur *Rollout) (*Rollout, error)) (*Rollout, bool, error) {
	obj := s.object(rolloutKey)
	for range swapAttempts {
		cur, etag, err := s.Rollout(ctx)
		if err != nil {
			return nil, false, err
		}
		n, err := next(cur)
		if err != nil || n == nil {
			return cur, false, err
		}
		body, err := encode(n)
		if err != nil {
			return nil, false, err
		}
		newETag, err := s.objects.PutIfMatch(ctx, obj, body, jsonType, etag)
		switch {
		case err == nil:
			s.remember(n, newETag)
			if n.State.Terminal() {
				// Should this fail, the next publisher archives it
				// before replacing it.
				_ = s.archive(ctx, n)
			}
			return n, true, nil
		case errors.Is(err, source.ErrPreconditionFailed), etag != "" && errors.Is(err, source.ErrNotFound):
			// Another writer got there first: decide again from theirs.
		default:
			return nil, false, err
		}
	}
	return nil, false, fmt.Errorf("%w: %s was written by another agent each of the %d times this one decided; it will decide again at its next poll", source.ErrPreconditionFailed, obj, swapAttempts)
}

// Publish publishes the rollout req asks for, from the hosts that
// reported recently. It fails with a *BusyError while another rollout is
// in flight, also when another publisher won a race for the environment.
// The rollout it replaces is archived first.
func (s *Store) Publish(ctx context.Context, req Request) (*Rollout, error) {
	reports, _, err := s.Reports(ctx)
	if err != nil {
		return nil, err
	}
	cur, _, err := s.Rollout(ctx)
	if err != nil {
		return nil, err
	}
	if cur != nil && cur.State.Terminal() {
		if err := s.archive(ctx, cur); err != nil {
			return nil, err
		}
	}
	r, _, err := s.swap(ctx, func(cur *Rollout) (*Rollout, error) {
		return NewRollout(cur, req, reports, s.Now())
	})
	return r, err
}

// Abort stops the rollout in flight of app (any app when empty) on behalf
// of by, and returns the document written.
func (s *Store) Abort(ctx context.Context, app, by string) (*Rollout, error) {
	r, _, err := s.swap(ctx, func(cur *Rollout) (*Rollout, error) {
		return Abort(cur, app, by, s.Now())
	})
	return r, err
}

// Outcome is what an evaluation did.
type Outcome struct {
	// Rollout is the document as it now is (nil when there is none).
	Rollout *Rollout
	// Changed says this evaluation wrote it, and Why says why.
	Changed bool
	Why     string
	// Unreadable names the reports that could not be read, and why.
	Unreadable []string
}

// Advance evaluates the rollout in flight, if any: it reads every report,
// computes Next and writes the result over the document it read; a
// terminal result is archived to rollouts/<id>.json. watchingSince is as
// for Next.
func (s *Store) Advance(ctx context.Context, watchingSince time.Time) (Outcome, error) {
	cur, _, err := s.Rollout(ctx)
	if err != nil || !inFlight(cur) {
		return Outcome{Rollout: cur}, err // nothing to evaluate: spare the listing
	}
	reports, unreadable, err := s.Reports(ctx)
	if err != nil {
		return Outcome{}, err
	}
	var why string
	r, changed, err := s.swap(ctx, func(cur *Rollout) (*Rollout, error) {
		next, w := Next(cur, reports, s.Now(), watchingSince)
		why = w
		return next, nil
	})
	if err != nil {
		return Outcome{}, err
	}
	out := Outcome{Rollout: r, Changed: changed, Unreadable: unreadable}
	if changed {
		out.Why = why
	}
	return out, nil
}

// archive copies a terminal rollout to rollouts/<id>.json, once.
func (s *Store) archive(ctx context.Context, r *Rollout) error {
	body, err := encode(r)
	if err != nil {
		return err
	}
	_, err = s.objects.PutIfMatch(ctx, s.object(historyDir+r.ID+".json"), body, jsonType, "")
	if errors.Is(err, source.ErrPreconditionFailed) {
		return nil // archived already; terminal documents never change
	}
	return err
}

// History returns the archived rollouts, oldest first.
func (s *Store) History(ctx context.Context) ([]*Rollout, error) {
	listed, err := s.objects.List(ctx, s.object(historyDir))
	if err != nil {
		return nil, err
	}
	var out []*Rollout
	for _, o := range listed {
		obj := source.Object{Bucket: s.env.Bucket, Key: o.Key}
		body, _, _, err := s.objects.GetIfChanged(ctx, obj, "")
		if err != nil {
			return nil, err
		}
		r, err := decode[Rollout](body, obj)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *Rollout) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Report writes this host's report.
func (s *Store) Report(ctx context.Context, rep HostReport) error {
	if err := ValidateHostID(rep.Host); err != nil {
		return err
	}
	rep.Format = FormatVersion
	body, err := encode(rep)
	if err != nil {
		return err
	}
	_, err = s.objects.Put(ctx, s.object(hostsDir+rep.Host+".json"), body, jsonType)
	return err
}

// Reports reads every host's report: one listing of hosts/, then a GET of
// each report whose ETag changed since this store last read it. A report
// that cannot be read is left out and named in unreadable, with why; its
// host turns lost if that lasts.
func (s *Store) Reports(ctx context.Context) (reports map[string]HostReport, unreadable []string, err error) {
	listed, err := s.objects.List(ctx, s.object(hostsDir))
	if err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	cache := s.reports
	s.mu.Unlock()
	read := make([]cachedReport, len(listed))
	errs := make([]error, len(listed))
	var wg sync.WaitGroup
	sem := make(chan struct{}, reportFetches)
	for i, o := range listed {
		if c, ok := cache[o.Key]; ok && c.etag == o.ETag {
			read[i] = c
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			read[i], errs[i] = s.readReport(ctx, o)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	fresh := make(map[string]cachedReport, len(listed))
	for i, o := range listed {
		fresh[o.Key] = read[i]
	}
	s.mu.Lock()
	s.reports = fresh
	s.mu.Unlock()
	reports = map[string]HostReport{}
	for _, c := range read { // in key order, as listed
		if c.err != nil {
			unreadable = append(unreadable, c.err.Error())
			continue
		}
		reports[c.report.Host] = c.report
	}
	return reports, unreadable, nil
}

// readReport reads one listed report. A report that S3 could not give is
// an error; one that is not a valid report is cached with why.
func (s *Store) readReport(ctx context.Context, o source.Listed) (cachedReport, error) {
	obj := source.Object{Bucket: s.env.Bucket, Key: o.Key}
	body, etag, _, err := s.objects.GetIfChanged(ctx, obj, "")
	if errors.Is(err, source.ErrNotFound) {
		// Deleted since the listing: a host that left.
		return cachedReport{etag: o.ETag, err: fmt.Errorf("%s: deleted while being read", obj)}, nil
	}
	if err != nil {
		return cachedReport{}, err
	}
	c := cachedReport{etag: etag}
	rep, err := decode[HostReport](body, obj)
	want := strings.TrimSuffix(strings.TrimPrefix(o.Key, s.env.Key+hostsDir), ".json")
	switch {
	case err != nil:
		c.err = err
	case rep.Host != want:
		c.err = fmt.Errorf("%s: the report is of host %q, not %q; each host writes only hosts/<its id>.json", obj, rep.Host, want)
	default:
		c.report = *rep
	}
	return c, nil
}

// PutVersion uploads an application version to
// versions/<app>/<label>.zip, never over an existing one, and returns it
// as a release to publish.
func (s *Store) PutVersion(ctx context.Context, app, label string, body io.ReadSeeker, size int64) (Release, error) {
	if err := checkName("app name", app); err != nil {
		return Release{}, err
	}
	if err := checkName("version label", label); err != nil {
		return Release{}, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, body); err != nil {
		return Release{}, fmt.Errorf("read the bundle: %w", err)
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return Release{}, fmt.Errorf("read the bundle: %w", err)
	}
	obj := s.object(versionsDir + app + "/" + label + ".zip")
	etag, err := s.objects.PutNew(ctx, obj, body, size)
	if err != nil {
		return Release{}, err
	}
	return Release{App: app, Label: label, Bundle: obj.String(), ETag: etag, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// encode writes a document as people read it.
func encode(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }

// decode reads a document of this format or an older one, strictly:
// unknown fields are errors, since rewriting the document would drop them.
func decode[T any](body []byte, obj source.Object) (*T, error) {
	var head struct {
		Format int `json:"format"`
	}
	if err := json.Unmarshal(body, &head); err != nil {
		return nil, fmt.Errorf("%s is not a JSON document: %v", obj, err)
	}
	if head.Format > FormatVersion {
		return nil, fmt.Errorf("%w: %s has format %d and this Sprout reads up to %d: upgrade this agent or CLI", ErrNewerFormat, obj, head.Format, FormatVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var v T
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%s is not valid: %v", obj, strings.TrimPrefix(err.Error(), "json: "))
	}
	return &v, nil
}
