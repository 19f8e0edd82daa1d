package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"github.com/sprout-paas/sprout/source"
)

// ErrNoConditionalWrites says the store ignores S3's conditional writes,
// on which every rule of a fleet rests.
var ErrNoConditionalWrites = errors.New("the store does not honour conditional writes")

// Probe proves that the store honours conditional writes, on
// probes/<writer>.json (one key per writer, so nothing piles up): an
// If-None-Match: * over an existing object and an If-Match on a wrong
// ETag must both fail with 412 and write nothing, and an If-Match on the
// right ETag must succeed. An agent calls it at start, the CLI before it
// publishes; either refuses a store that fails it.
//
// Two processes that probe as the same writer at once (two CLIs of one
// user on one machine) can disturb each other's last two steps, so a
// failure there is tried again, a few times, before the store is refused:
// a store that refuses every If-Match fails every time.
func (s *Store) Probe(ctx context.Context, writer string) error {
	if err := checkName("writer", writer); err != nil {
		return err
	}
	var err error
	for attempt := range probeAttempts {
		if err = s.probe(ctx, writer); !errors.Is(err, errMaybeDisturbed) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * time.Duration(50+mrand.IntN(200)) * time.Millisecond):
		}
	}
	return err
}

// probeAttempts is how many times Probe tries when a rival may have
// disturbed it.
const probeAttempts = 4

// errMaybeDisturbed marks a probe failure that a concurrent probe of the
// same writer could cause (maybeDisturbed wraps one).
var errMaybeDisturbed = errors.New("possibly disturbed by another probe")

type maybeDisturbed struct{ error }

func (e maybeDisturbed) Unwrap() error        { return e.error }
func (e maybeDisturbed) Is(target error) bool { return target == errMaybeDisturbed }

func (s *Store) probe(ctx context.Context, writer string) error {
	obj := s.object(probesDir + writer + ".json")
	body := func(step string) []byte {
		nonce := make([]byte, 8)
		rand.Read(nonce)
		return fmt.Appendf(nil, `{"writer":%q,"step":%q,"nonce":"%x"}`, writer, step, nonce)
	}
	refuse := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s; a fleet needs them so that two writers never both win: use AWS S3, or a store that implements If-None-Match and If-Match on PutObject", ErrNoConditionalWrites, obj, fmt.Sprintf(format, a...))
	}
	etag, err := s.objects.Put(ctx, obj, body("create"), jsonType)
	if err != nil {
		return fmt.Errorf("probe the store's conditional writes: %w", err)
	}
	switch _, err := s.objects.PutIfMatch(ctx, obj, body("if-none-match"), jsonType, ""); {
	case err == nil:
		return refuse("a PUT with If-None-Match: * over an existing object succeeded, so the store ignores If-None-Match")
	case !errors.Is(err, source.ErrPreconditionFailed):
		return fmt.Errorf("probe the store's conditional writes: %w", err)
	}
	wrong := make([]byte, 16)
	rand.Read(wrong)
	switch _, err := s.objects.PutIfMatch(ctx, obj, body("if-match-wrong"), jsonType, hex.EncodeToString(wrong)); {
	case err == nil:
		return refuse("a PUT with If-Match on a wrong ETag succeeded, so the store ignores If-Match")
	case !errors.Is(err, source.ErrPreconditionFailed):
		return fmt.Errorf("probe the store's conditional writes: %w", err)
	}
	last := body("if-match")
	if _, err := s.objects.PutIfMatch(ctx, obj, last, jsonType, etag); err != nil {
		if errors.Is(err, source.ErrPreconditionFailed) {
			return maybeDisturbed{refuse("a PUT with If-Match on the object's own ETag failed, so no conditional write could ever succeed")}
		}
		return fmt.Errorf("probe the store's conditional writes: %w", err)
	}
	got, _, _, err := s.objects.GetIfChanged(ctx, obj, "")
	if err != nil {
		return fmt.Errorf("probe the store's conditional writes: %w", err)
	}
	if string(got) != string(last) {
		return maybeDisturbed{refuse("the object is not what the last write wrote, so a refused write changed it")}
	}
	return nil
}
