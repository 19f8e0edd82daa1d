package source

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// S3Options say how to reach S3 or an S3-compatible store.
type S3Options struct {
	// Region, when empty, comes from the standard chain: AWS_REGION, the
	// shared config, then the instance's metadata (IMDSv2).
	Region string
	// Endpoint overrides S3's for an S3-compatible store.
	Endpoint string
	// PathStyle addresses buckets as endpoint/bucket/key.
	PathStyle bool
}

// S3 reads and writes bundles and manifests in S3, with the SDK's
// standard credential chain (environment, shared config, the instance
// role through IMDSv2).
type S3 struct {
	client *s3.Client
	region string
}

// NewS3 loads the AWS configuration. It reaches no network until used.
func NewS3(ctx context.Context, o S3Options) (*S3, error) {
	opts := []func(*config.LoadOptions) error{config.WithEC2IMDSRegion()}
	if o.Region != "" {
		opts = append(opts, config.WithRegion(o.Region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("load the AWS configuration: %w", err)
	}
	if cfg.Region == "" && o.Endpoint != "" {
		cfg.Region = "us-east-1" // S3-compatible stores mostly ignore it
	}
	client := s3.NewFromConfig(cfg, func(so *s3.Options) {
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
		}
		so.UsePathStyle = o.PathStyle
		// Objects put by other tools often carry no checksum; that is
		// not worth a log line on every fetch.
		so.DisableLogOutputChecksumValidationSkipped = true
	})
	return &S3{client: client, region: cfg.Region}, nil
}

// Object names an object in a bucket.
type Object struct{ Bucket, Key string }

func (o Object) String() string { return "s3://" + o.Bucket + "/" + o.Key }

// ParseS3URL reads s3://bucket/key.
func ParseS3URL(s string) (Object, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return Object{}, fmt.Errorf("%w: %q is not an S3 URL like s3://bucket/key", ErrInvalid, s)
	}
	return Object{Bucket: u.Host, Key: strings.TrimPrefix(u.Path, "/")}, nil
}

// Fetched describes a fetched bundle.
type Fetched struct {
	// Ref is where it came from, without credentials.
	Ref string
	// Bytes is its size; SHA256 its digest as Sprout computed it.
	Bytes  int64
	SHA256 string
	// ETag is the S3 object's; Commit the git commit.
	ETag   string
	Commit string
}

// Fetch streams an object into w, at most max bytes, and returns its size,
// SHA-256 and ETag.
func (s *S3) Fetch(ctx context.Context, obj Object, w io.Writer, max int64) (Fetched, error) {
	if err := s.ready(obj); err != nil {
		return Fetched{}, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &obj.Bucket, Key: &obj.Key})
	if err != nil {
		return Fetched{}, s.explain(obj, err)
	}
	defer out.Body.Close()
	if out.ContentLength != nil && *out.ContentLength > max {
		return Fetched{}, fmt.Errorf("%w: %s is %d bytes, more than bundle.max_upload_bytes (%d)", ErrTooLarge, obj, *out.ContentLength, max)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(out.Body, max+1))
	if err != nil {
		return Fetched{}, fmt.Errorf("%s: reading the object: %w", obj, err)
	}
	if n > max {
		return Fetched{}, fmt.Errorf("%w: %s is more than bundle.max_upload_bytes (%d)", ErrTooLarge, obj, max)
	}
	return Fetched{Ref: obj.String(), Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil)), ETag: strings.Trim(aws.ToString(out.ETag), `"`)}, nil
}

// PutNew uploads body as a new object; an existing object is never
// overwritten (a conditional put, If-None-Match: *).
func (s *S3) PutNew(ctx context.Context, obj Object, body io.ReadSeeker, size int64) (string, error) {
	if err := s.ready(obj); err != nil {
		return "", err
	}
	exists := fmt.Errorf("%w: %s already exists; application versions are never overwritten (choose another --label)", ErrExists, obj)
	// Stores that ignore conditional puts still get the check.
	if _, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &obj.Bucket, Key: &obj.Key}); err == nil {
		return "", exists
	} else if !isNotFound(err) {
		return "", s.explain(obj, err)
	}
	etag, err := s.put(ctx, obj, &s3.PutObjectInput{Body: body, ContentLength: aws.Int64(size), IfNoneMatch: aws.String("*")})
	if errors.Is(err, ErrPreconditionFailed) {
		return "", exists
	}
	return etag, err
}

// Put writes a small object, replacing what is there.
func (s *S3) Put(ctx context.Context, obj Object, body []byte, contentType string) (string, error) {
	return s.put(ctx, obj, &s3.PutObjectInput{Body: bytes.NewReader(body), ContentType: aws.String(contentType)})
}

// PutIfMatch writes a small object only if nobody wrote it since it was
// read with ETag etag (If-Match), or, when etag is empty, only if it does
// not exist (If-None-Match: *): a compare-and-swap. It returns the new
// ETag. A write that lost returns ErrPreconditionFailed, and nothing was
// written: read the object again and decide again (Update does).
//
// S3 answers a write If-Match to an object deleted since it was read with
// 404 NoSuchKey (ErrNotFound), not 412.
func (s *S3) PutIfMatch(ctx context.Context, obj Object, body []byte, contentType, etag string) (string, error) {
	in := &s3.PutObjectInput{Body: bytes.NewReader(body), ContentType: aws.String(contentType)}
	if etag == "" {
		in.IfNoneMatch = aws.String("*")
	} else {
		in.IfMatch = aws.String(`"` + etag + `"`)
	}
	return s.put(ctx, obj, in)
}

// put writes in to obj and returns the new ETag.
func (s *S3) put(ctx context.Context, obj Object, in *s3.PutObjectInput) (string, error) {
	if err := s.ready(obj); err != nil {
		return "", err
	}
	in.Bucket, in.Key = &obj.Bucket, &obj.Key
	out, err := s.client.PutObject(ctx, in)
	if err != nil {
		return "", s.explain(obj, err)
	}
	return strings.Trim(aws.ToString(out.ETag), `"`), nil
}

// Delete removes an object; one that does not exist is no error, as in
// S3 itself.
func (s *S3) Delete(ctx context.Context, obj Object) error {
	if err := s.ready(obj); err != nil {
		return err
	}
	if _, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &obj.Bucket, Key: &obj.Key}); err != nil && !isNotFound(err) {
		return s.explain(obj, err)
	}
	return nil
}

// DeleteIfMatch removes an object only if its ETag is still etag
// (If-Match): a delete that cannot undo someone else's write. One written
// since returns ErrPreconditionFailed, one already gone ErrNotFound, and a
// store that does not do conditional deletes ErrNotImplemented (nothing
// was deleted in each case). Some stores ignore If-Match on a delete and
// delete anyway; read the ETag first to narrow what they can undo.
func (s *S3) DeleteIfMatch(ctx context.Context, obj Object, etag string) error {
	if err := s.ready(obj); err != nil {
		return err
	}
	in := &s3.DeleteObjectInput{Bucket: &obj.Bucket, Key: &obj.Key, IfMatch: aws.String(`"` + etag + `"`)}
	if _, err := s.client.DeleteObject(ctx, in); err != nil {
		return s.explain(obj, err)
	}
	return nil
}

// UpdateAttempts bounds how often Update reads, changes and writes an
// object that others keep writing.
const UpdateAttempts = 5

// updateBackoff is the longest wait before Update's second attempt; it
// doubles for each further attempt, and each wait is drawn at random
// below it so that writers who collided do not collide again.
const updateBackoff = 20 * time.Millisecond

// Update changes a small object by compare-and-swap: it reads the object,
// calls change with its body (nil when there is none), and writes what
// change returns with PutIfMatch. When someone else wrote the object in
// between, it reads it again and calls change again, up to UpdateAttempts
// times with a short jittered back-off; then it gives up with an error
// wrapping ErrPreconditionFailed. change may thus run several times and
// must only compute; an error from it ends Update. It returns the ETag
// written.
func (s *S3) Update(ctx context.Context, obj Object, contentType string, change func(old []byte) ([]byte, error)) (string, error) {
	for attempt := range UpdateAttempts {
		if attempt > 0 {
			wait := time.NewTimer(rand.N(updateBackoff << (attempt - 1)))
			select {
			case <-ctx.Done():
				wait.Stop()
				return "", ctx.Err()
			case <-wait.C:
			}
		}
		old, etag, _, err := s.GetIfChanged(ctx, obj, "")
		if err != nil && !errors.Is(err, ErrNotFound) {
			return "", err
		}
		body, err := change(old)
		if err != nil {
			return "", err
		}
		newETag, err := s.PutIfMatch(ctx, obj, body, contentType, etag)
		switch {
		case err == nil:
			return newETag, nil
		case errors.Is(err, ErrPreconditionFailed), etag != "" && errors.Is(err, ErrNotFound):
			// Someone else wrote (or deleted) it since it was read.
		default:
			return "", err
		}
	}
	return "", fmt.Errorf("%w: %s was written by someone else each of the %d times it was read and changed", ErrPreconditionFailed, obj, UpdateAttempts)
}

// Exists tells whether an object exists, with an error that names why
// when it cannot tell or it does not.
func (s *S3) Exists(ctx context.Context, obj Object) error {
	if err := s.ready(obj); err != nil {
		return err
	}
	if _, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &obj.Bucket, Key: &obj.Key}); err != nil {
		return s.explain(obj, err)
	}
	return nil
}

// Listed is one object of a listing.
type Listed struct {
	Key          string
	ETag         string
	Size         int64
	LastModified time.Time
}

// List returns every object whose key starts with prefix.Key, in key
// order, with its ETag, so that a reader can fetch again only what
// changed. One request answers up to 1,000 objects.
func (s *S3) List(ctx context.Context, prefix Object) ([]Listed, error) {
	switch {
	case s.region == "":
		return nil, s.ready(prefix) // it says to set the region
	case prefix.Bucket == "":
		return nil, fmt.Errorf("%w: %s names no bucket", ErrInvalid, prefix)
	}
	var out []Listed
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &prefix.Bucket, Prefix: &prefix.Key})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, s.explain(prefix, err)
		}
		for _, o := range page.Contents {
			out = append(out, Listed{
				Key:          aws.ToString(o.Key),
				ETag:         strings.Trim(aws.ToString(o.ETag), `"`),
				Size:         aws.ToInt64(o.Size),
				LastModified: aws.ToTime(o.LastModified),
			})
		}
	}
	return out, nil
}

// maxSmall bounds a manifest.
const maxSmall = 1 << 20

// GetIfChanged reads a small object unless its ETag is still etag; then
// it returns changed false.
func (s *S3) GetIfChanged(ctx context.Context, obj Object, etag string) (body []byte, newETag string, changed bool, err error) {
	in := &s3.GetObjectInput{Bucket: &obj.Bucket, Key: &obj.Key}
	if etag != "" {
		in.IfNoneMatch = aws.String(`"` + etag + `"`)
	}
	body, out, err := s.getSmall(ctx, obj, in)
	if errors.Is(err, errNotModified) {
		return nil, etag, false, nil
	}
	if err != nil {
		return nil, "", false, err
	}
	return body, strings.Trim(aws.ToString(out.ETag), `"`), true, nil
}

// GetWithAge reads a small object with its ETag and its age: how long
// ago it was last written, by the store's own clock (its Date header
// against the object's Last-Modified), so that hosts whose clocks
// disagree judge it alike. Both times have a resolution of one second;
// a store that sends no Last-Modified gives an age of 0.
func (s *S3) GetWithAge(ctx context.Context, obj Object) (body []byte, etag string, age time.Duration, err error) {
	body, out, err := s.getSmall(ctx, obj, &s3.GetObjectInput{Bucket: &obj.Bucket, Key: &obj.Key})
	if err != nil {
		return nil, "", 0, err
	}
	now, ok := awsmiddleware.GetServerTime(out.ResultMetadata)
	if !ok {
		now = time.Now() // a store that sends no Date: this host's clock
	}
	if out.LastModified != nil {
		age = max(now.Sub(*out.LastModified), 0)
	}
	return body, strings.Trim(aws.ToString(out.ETag), `"`), age, nil
}

// errNotModified is getSmall's answer to a conditional get of an object
// that did not change (304).
var errNotModified = errors.New("not modified")

// getSmall gets a small object (at most maxSmall bytes: a manifest, a
// rollout, a lock) and reads its body.
func (s *S3) getSmall(ctx context.Context, obj Object, in *s3.GetObjectInput) ([]byte, *s3.GetObjectOutput, error) {
	if err := s.ready(obj); err != nil {
		return nil, nil, err
	}
	// No response checksum: a 304 may carry the object's checksum header
	// with no body (the loopback S3's does), and the SDK then logs a
	// warning at each poll, several a second in a fleet. The body is
	// small, comes over TLS and is parsed strictly.
	out, err := s.client.GetObject(ctx, in, func(o *s3.Options) {
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	if err != nil {
		var re *smithyhttp.ResponseError
		if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotModified {
			return nil, nil, errNotModified
		}
		return nil, nil, s.explain(obj, err)
	}
	defer out.Body.Close()
	body, err := io.ReadAll(io.LimitReader(out.Body, maxSmall+1))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: reading the object: %w", obj, err)
	}
	if len(body) > maxSmall {
		return nil, nil, fmt.Errorf("%w: %s is larger than %d bytes; a manifest, a rollout or a lock is small JSON", ErrTooLarge, obj, maxSmall)
	}
	return body, out, nil
}

func (s *S3) ready(obj Object) error {
	if s.region == "" {
		return fmt.Errorf("%s: no AWS region is set: set s3.region in the agent's config, or AWS_REGION (on EC2 it comes from the instance's metadata)", obj)
	}
	if obj.Key == "" || strings.HasSuffix(obj.Key, "/") {
		return fmt.Errorf("%w: %s names no object (a key is needed after the bucket)", ErrInvalid, obj)
	}
	return nil
}

func isNotFound(err error) bool {
	var re *smithyhttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound
}

// explain turns an S3 error into one sentence naming the bucket, the key
// and the cause: from the error code S3 sent, else (answers to HEAD carry
// no body) from the HTTP status.
func (s *S3) explain(obj Object, err error) error {
	code, status := "", 0
	var api smithy.APIError
	if errors.As(err, &api) {
		code = api.ErrorCode()
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	switch {
	case code == "NoSuchBucket":
		return fmt.Errorf("%w: %s: bucket %s does not exist (check its name and the region %s)", ErrNotFound, obj, obj.Bucket, s.region)
	case code == "NoSuchKey":
		return fmt.Errorf("%w: %s: no such object in bucket %s (check the key)", ErrNotFound, obj, obj.Bucket)
	case code == "NotFound" || status == http.StatusNotFound:
		// A HEAD's 404 does not say whether the key or the bucket is missing.
		return fmt.Errorf("%w: %s: no such object in bucket %s, or no such bucket (check both)", ErrNotFound, obj, obj.Bucket)
	case code == "AccessDenied" || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" || status == http.StatusForbidden:
		return fmt.Errorf("%w: %s: access denied (%s); give the instance role or user s3:GetObject and s3:PutObject on it", ErrDenied, obj, cmp.Or(code, "403"))
	case code == "PermanentRedirect" || code == "AuthorizationHeaderMalformed" || code == "IllegalLocationConstraintException" || status == http.StatusMovedPermanently:
		return fmt.Errorf("%s: bucket %s is in another region than %s; set s3.region (or AWS_REGION) to the bucket's region", obj, obj.Bucket, s.region)
	case code == "PreconditionFailed" || code == "ConditionalRequestConflict" || status == http.StatusPreconditionFailed:
		// 409 ConditionalRequestConflict: another conditional write to
		// the key was under way; it is lost the same way.
		return fmt.Errorf("%w: %s changed since it was read (someone else wrote it); nothing was written", ErrPreconditionFailed, obj)
	case code == "NotImplemented" || status == http.StatusNotImplemented:
		return fmt.Errorf("%w: %s: the store does not support this request (%s)", ErrNotImplemented, obj, cmp.Or(code, "501"))
	case code != "":
		return fmt.Errorf("%s: %s: %s", obj, code, api.ErrorMessage())
	}
	return fmt.Errorf("%s: cannot reach S3: %w", obj, err)
}
