package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/rollout"
	"github.com/sprout-paas/sprout/source"
)

const envURL = "s3://fleet/envs/prod/"

// newS3 starts a loopback S3 with the bucket "fleet" and returns a client
// of it through the real SDK, and the fake.
func newS3(t *testing.T) (*source.S3, *testenv.FakeS3) {
	t.Helper()
	fake := testenv.S3(t, "fleet")
	return client(t, fake.URL), fake
}

func client(t *testing.T, endpoint string) *source.S3 {
	t.Helper()
	s, err := source.NewS3(context.Background(), source.S3Options{Endpoint: endpoint, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// spy counts GETs and listings, and can hold writes of rollout.json.
type spy struct {
	Objects
	gets, lists atomic.Int32
	// beforeSwap, when set, runs before each conditional write of
	// rollout.json.
	beforeSwap func()
}

func (s *spy) GetIfChanged(ctx context.Context, obj source.Object, etag string) ([]byte, string, bool, error) {
	s.gets.Add(1)
	return s.Objects.GetIfChanged(ctx, obj, etag)
}

func (s *spy) List(ctx context.Context, prefix source.Object) ([]source.Listed, error) {
	s.lists.Add(1)
	return s.Objects.List(ctx, prefix)
}

func (s *spy) PutIfMatch(ctx context.Context, obj source.Object, body []byte, contentType, etag string) (string, error) {
	if s.beforeSwap != nil && strings.HasSuffix(obj.Key, "/"+rolloutKey) {
		s.beforeSwap()
	}
	return s.Objects.PutIfMatch(ctx, obj, body, contentType, etag)
}

// open opens the environment through a spy, with a clock the test moves.
func open(t *testing.T, objects Objects, clock *time.Time) (*Store, *spy) {
	t.Helper()
	sp := &spy{Objects: objects}
	st, err := Open(sp, envURL)
	if err != nil {
		t.Fatal(err)
	}
	st.Now = func() time.Time { return *clock }
	return st, sp
}

// report writes host id's report: it has read the rollout r and serves
// label, healthy since since.
func report(t *testing.T, st *Store, id string, r *Rollout, label string, now, since time.Time) {
	t.Helper()
	rep := HostReport{Host: id, Agent: "test", ReportedAt: now, Apps: map[string]AppReport{"web": {Serving: label, Phase: PhaseHealthy, HealthySince: since}}}
	if r != nil {
		rep.Epoch, rep.Rollout = r.Epoch, r.ID
	}
	if err := st.Report(context.Background(), rep); err != nil {
		t.Fatal(err)
	}
}

// firstVersion opens an environment of one host, h1, and publishes v1 of
// web, its first version, to it.
func firstVersion(t *testing.T) (*source.S3, *Store, *spy, *Rollout) {
	t.Helper()
	s3c, _ := newS3(t)
	now := t0
	st, sp := open(t, s3c, &now)
	report(t, st, "h1", nil, "", now, time.Time{})
	r, err := st.Publish(context.Background(), Request{Release: release("v1"), Settings: DefaultSettings(), By: "alice@laptop"})
	if err != nil {
		t.Fatal(err)
	}
	return s3c, st, sp, r
}

// TestStore runs a rollout through the real S3 wire protocol: upload a
// version, publish, hosts report, evaluations advance it to succeeded,
// the finished rollout is archived, and polls are conditional.
func TestStore(t *testing.T) {
	ctx := context.Background()
	s3c, _ := newS3(t)
	now := t0
	st, sp := open(t, s3c, &now)
	if err := st.Probe(ctx, "h1"); err != nil {
		t.Fatalf("probe: %v", err)
	}
	if r, etag, err := st.Rollout(ctx); r != nil || etag != "" || err != nil {
		t.Fatalf("a new environment has a rollout: %v %q %v", r, etag, err)
	}

	bundle := []byte("PK... a bundle")
	rel, err := st.PutVersion(ctx, "web", "v1", bytes.NewReader(bundle), int64(len(bundle)))
	sum := sha256.Sum256(bundle)
	if err != nil || rel.Bundle != envURL+"versions/web/v1.zip" || rel.SHA256 != hex.EncodeToString(sum[:]) || rel.ETag == "" {
		t.Fatalf("put version: %+v %v", rel, err)
	}
	if _, err := st.PutVersion(ctx, "web", "v1", bytes.NewReader(bundle), int64(len(bundle))); !errors.Is(err, source.ErrExists) {
		t.Errorf("a version was overwritten: %v", err)
	}

	for _, id := range []string{"h1", "h2", "h3"} {
		report(t, st, id, nil, "", now, time.Time{})
	}
	r, err := st.Publish(ctx, Request{Release: rel, Settings: settings(rollout.Rolling, 2, rollout.Fixed), By: "alice@laptop"})
	if err != nil || r.State != StateRunning || len(r.Batches) != 2 {
		t.Fatalf("publish: %v %+v", err, r)
	}
	if _, err := st.Publish(ctx, Request{Release: rel, Settings: DefaultSettings()}); !errors.Is(err, ErrBusy) {
		t.Errorf("a second publish: %v", err)
	}

	// A poll of an unchanged rollout.json is answered 304 and gives the
	// document read before.
	again, etag, err := st.Rollout(ctx)
	if err != nil || again != r || etag == "" {
		t.Errorf("a conditional poll: %p %q %v, want the remembered %p", again, etag, err, r)
	}

	// The hosts of each batch turn healthy; evaluations move the rollout.
	wants := []State{StateRunning, StateSucceeded}
	for i, batch := range r.Batches {
		now = now.Add(time.Second)
		cur, _, _ := st.Rollout(ctx)
		for _, id := range []string{"h1", "h2", "h3"} {
			label := ""
			if cur.Hosts[id].State != HostPending {
				label = "v1"
			}
			report(t, st, id, cur, label, now, now)
		}
		now = now.Add(DefaultStableFor)
		out, err := st.Advance(ctx, t0)
		if err != nil || !out.Changed || out.Rollout.State != wants[i] || len(out.Unreadable) != 0 {
			t.Fatalf("batch %v: %v %+v", batch, err, out)
		}
		if out, err := st.Advance(ctx, t0); err != nil || out.Changed {
			t.Fatalf("an evaluation with nothing new changed the rollout: %v %+v", err, out)
		}
	}
	history, err := st.History(ctx)
	if err != nil || len(history) != 1 || history[0].ID != r.ID || history[0].State != StateSucceeded || history[0].Good["web"].Label != "v1" {
		t.Fatalf("history: %v %+v", err, history)
	}

	// Reports are read again only when their ETag changed.
	gets := sp.gets.Load()
	if _, _, err := st.Reports(ctx); err != nil || sp.gets.Load() != gets {
		t.Errorf("reading unchanged reports made %d GETs: %v", sp.gets.Load()-gets, err)
	}
	// With no rollout in flight an evaluation lists nothing.
	lists := sp.lists.Load()
	if out, err := st.Advance(ctx, t0); err != nil || out.Changed || out.Rollout.State != StateSucceeded || sp.lists.Load() != lists {
		t.Errorf("an idle evaluation: %+v %v, %d listings", out, err, sp.lists.Load()-lists)
	}

	// The next rollout replaces the finished one, which stays archived.
	v2 := rel
	v2.Label = "v2"
	next, err := st.Publish(ctx, Request{Release: v2, Settings: DefaultSettings(), By: "alice@laptop"})
	if err != nil || next.Good["web"].Label != "v1" || next.Epoch <= r.Epoch {
		t.Fatalf("the next publish: %v %+v", err, next)
	}
	if h, _ := st.History(ctx); len(h) != 1 {
		t.Errorf("history after the next publish: %d rollouts", len(h))
	}
	aborted, err := st.Abort(ctx, "web", "bob@ci")
	if err != nil || aborted.State != StateRollingBack {
		t.Errorf("abort: %v %+v", err, aborted)
	}
}

// TestAbortArchives: aborting the first version of an app has nothing to
// return to, so the rollout ends failed at once, and is archived.
func TestAbortArchives(t *testing.T) {
	ctx := context.Background()
	_, st, _, _ := firstVersion(t)
	r, err := st.Abort(ctx, "web", "bob@ci")
	if err != nil || r.State != StateFailed {
		t.Fatalf("abort: %v %+v", err, r)
	}
	if h, err := st.History(ctx); err != nil || len(h) != 1 || h[0].State != StateFailed {
		t.Errorf("history: %v %+v", err, h)
	}
}

// TestPublishRace: two CLIs publish to one environment at once. Both read
// that no rollout is in flight and both write with If-None-Match: *; S3
// lets exactly one win, and the other is refused naming the winner.
func TestPublishRace(t *testing.T) {
	ctx := context.Background()
	s3c, _ := newS3(t)
	now := t0
	a, spa := open(t, s3c, &now)
	b, spb := open(t, s3c, &now)
	report(t, a, "h1", nil, "", now, time.Time{})
	both := holdFirst(2)
	spa.beforeSwap, spb.beforeSwap = both, both

	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, st := range []*Store{a, b} {
		wg.Go(func() {
			_, errs[i] = st.Publish(ctx, Request{Release: release(fmt.Sprintf("v%d", i+1)), Settings: DefaultSettings(), By: fmt.Sprintf("cli%d@laptop", i+1)})
		})
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "published by cli"):
			t.Errorf("the loser's error: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d publishers won: %v", won, errs)
	}
	r, _, err := a.Rollout(ctx)
	if err != nil || r == nil || r.State != StateRunning {
		t.Fatalf("after the race: %v %+v", err, r)
	}
}

// holdFirst makes the first write of each of n callers wait until all n
// are about to write, so that all of them decided from the same read.
func holdFirst(n int) func() {
	var wg sync.WaitGroup
	wg.Add(n)
	var mu sync.Mutex
	calls := 0
	return func() {
		mu.Lock()
		calls++
		first := calls <= n
		mu.Unlock()
		if first {
			wg.Done()
			wg.Wait()
		}
	}
}

// TestAdvanceRace: two agents evaluate the same documents at once; one
// write wins, the other loses with 412, reads the winner's document and
// finds nothing left to do. The loser could not overwrite the newer
// decision with its own, older one.
func TestAdvanceRace(t *testing.T) {
	ctx := context.Background()
	s3c, _ := newS3(t)
	now := t0
	a, spa := open(t, s3c, &now)
	b, spb := open(t, s3c, &now)
	for _, id := range []string{"h1", "h2"} {
		report(t, a, id, nil, "v0", now, t0.Add(-time.Hour))
	}
	r, err := a.Publish(ctx, Request{Release: release("v1"), Settings: settings(rollout.Rolling, 1, rollout.Fixed)})
	if err != nil {
		t.Fatal(err)
	}
	_, published, _ := a.Rollout(ctx)
	report(t, a, "h1", r, "v1", now, now)
	now = now.Add(3 * time.Second)
	both := holdFirst(2)
	spa.beforeSwap, spb.beforeSwap = both, both

	outs := make([]Outcome, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, st := range []*Store{a, b} {
		wg.Go(func() { outs[i], errs[i] = st.Advance(ctx, t0) })
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if outs[0].Changed == outs[1].Changed {
		t.Fatalf("both or neither wrote: %+v", outs)
	}
	for _, out := range outs {
		if out.Rollout.Epoch != r.Epoch+1 || out.Rollout.Batch != 1 {
			t.Errorf("an evaluator sees epoch %d batch %d, want %d and 1", out.Rollout.Epoch, out.Rollout.Batch, r.Epoch+1)
		}
	}

	// A writer still holding the ETag of the published document cannot
	// overwrite the newer decision.
	_, err = s3c.PutIfMatch(ctx, source.Object{Bucket: "fleet", Key: "envs/prod/rollout.json"}, []byte(`{}`), jsonType, published)
	if !errors.Is(err, source.ErrPreconditionFailed) {
		t.Errorf("a stale write: %v", err)
	}
}

// TestSwapGivesUp: against a rival that writes rollout.json between every
// read and write, a writer gives up after swapAttempts, having written
// nothing, and says it will decide again.
func TestSwapGivesUp(t *testing.T) {
	ctx := context.Background()
	s3c, st, sp, r := firstVersion(t)
	obj := source.Object{Bucket: "fleet", Key: "envs/prod/rollout.json"}
	rival := *r
	sp.beforeSwap = func() {
		rival.Epoch++
		body, _ := encode(&rival)
		if _, err := s3c.Put(ctx, obj, body, jsonType); err != nil {
			t.Error(err)
		}
	}
	_, err := st.Abort(ctx, "web", "bob@ci")
	if !errors.Is(err, source.ErrPreconditionFailed) || !strings.Contains(err.Error(), "written by another agent each of the 5 times") {
		t.Fatalf("abort against a rival: %v", err)
	}
	sp.beforeSwap = nil
	if cur, _, _ := st.Rollout(ctx); cur.State != StateRunning || cur.Epoch != rival.Epoch {
		t.Errorf("the loser wrote: %s epoch %d, want the rival's running epoch %d", cur.State, cur.Epoch, rival.Epoch)
	}
}

// TestReportsUnreadable: a report that is not valid, is another host's,
// or comes from a newer Sprout is left out and named; the rest are read.
func TestReportsUnreadable(t *testing.T) {
	ctx := context.Background()
	s3c, fake := newS3(t)
	now := t0
	st, _ := open(t, s3c, &now)
	report(t, st, "h1", nil, "v1", now, now)
	fake.Put(t, "fleet", "envs/prod/hosts/h2.json", []byte(`{"format":1,"host":"h2","reported_at":"2025-01-01T12:00:00Z","epoch":0,"surprise":true}`))
	fake.Put(t, "fleet", "envs/prod/hosts/h3.json", []byte(`{"format":1,"host":"h1"}`))
	fake.Put(t, "fleet", "envs/prod/hosts/h4.json", []byte(`{"format":2,"host":"h4"}`))
	reports, unreadable, err := st.Reports(ctx)
	if err != nil || len(reports) != 1 || reports["h1"].Apps["web"].Serving != "v1" {
		t.Fatalf("reports %+v: %v", reports, err)
	}
	want := []string{
		`s3://fleet/envs/prod/hosts/h2.json is not valid: unknown field "surprise"`,
		`s3://fleet/envs/prod/hosts/h3.json: the report is of host "h1", not "h3"`,
		"s3://fleet/envs/prod/hosts/h4.json has format 2 and this Sprout reads up to 1: upgrade this agent or CLI",
	}
	if len(unreadable) != len(want) {
		t.Fatalf("unreadable %q", unreadable)
	}
	for i, w := range want {
		if !strings.Contains(unreadable[i], w) {
			t.Errorf("unreadable %q\nwant %q", unreadable[i], w)
		}
	}
	fake.Put(t, "fleet", "envs/prod/rollout.json", []byte(`{"format":2}`))
	if _, _, err := st.Rollout(ctx); !errors.Is(err, ErrNewerFormat) {
		t.Errorf("a rollout.json of a newer format: %v", err)
	}
	if err := st.Report(ctx, HostReport{Host: "../h1"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a report of a bad host id: %v", err)
	}
	if _, err := Open(s3c, "https://fleet/envs/prod"); !errors.Is(err, ErrInvalid) {
		t.Errorf("an environment that is no S3 prefix: %v", err)
	}
	if st2, err := Open(s3c, "s3://fleet/envs/prod"); err != nil || st2.URL() != envURL {
		t.Errorf("a prefix without its slash: %v %v", st2, err)
	}
}

// meddling is a loopback S3 behind a handler that may answer a request
// itself (it returns true) or change it before the S3 answers.
func meddling(t *testing.T, fake *testenv.FakeS3, meddle func(w http.ResponseWriter, r *http.Request) bool) string {
	t.Helper()
	target, err := url.Parse(fake.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !meddle(w, r) {
			proxy.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// stripping drops the headers named from every request: a store that
// does not honour them.
func stripping(headers ...string) func(w http.ResponseWriter, r *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		for _, h := range headers {
			r.Header.Del(h)
		}
		return false
	}
}

// refusingIfMatch answers 412 to every write with If-Match.
func refusingIfMatch(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodPut || r.Header.Get("If-Match") == "" {
		return false
	}
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(http.StatusPreconditionFailed)
	fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>`)
	return true
}

// TestProbe refuses a store that ignores either conditional header, and
// says which, with the fix.
func TestProbe(t *testing.T) {
	ctx := context.Background()
	s3c, fake := newS3(t)
	now := t0
	good, _ := open(t, s3c, &now)
	if err := good.Probe(ctx, "h1"); err != nil {
		t.Fatalf("S3 with conditional writes: %v", err)
	}
	if err := good.Probe(ctx, "h1"); err != nil {
		t.Fatalf("a second probe on the same key: %v", err)
	}
	for _, tc := range []struct {
		name   string
		meddle func(w http.ResponseWriter, r *http.Request) bool
		want   string
	}{
		{"no conditional headers", stripping("If-None-Match", "If-Match"), "a PUT with If-None-Match: * over an existing object succeeded, so the store ignores If-None-Match"},
		{"no If-Match", stripping("If-Match"), "a PUT with If-Match on a wrong ETag succeeded, so the store ignores If-Match"},
		{"every If-Match refused", refusingIfMatch, "a PUT with If-Match on the object's own ETag failed, so no conditional write could ever succeed"},
	} {
		st, _ := open(t, client(t, meddling(t, fake, tc.meddle)), &now)
		err := st.Probe(ctx, "h2")
		if !errors.Is(err, ErrNoConditionalWrites) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "use AWS S3, or a store that implements If-None-Match and If-Match on PutObject") {
			t.Errorf("%s: %v\nwant %q", tc.name, err, tc.want)
		}
	}
	if err := good.Probe(ctx, "a/b"); !errors.Is(err, ErrInvalid) {
		t.Errorf("a writer that is no key: %v", err)
	}
}

// TestProbesOfOneWriterAtOnce runs probes of one writer side by side, as
// two CLIs of one user on one machine do: they may disturb each other's
// last steps, and each must still accept a store that honours
// conditional writes.
func TestProbesOfOneWriterAtOnce(t *testing.T) {
	ctx := context.Background()
	s3c, _ := newS3(t)
	now := t0
	st, _ := open(t, s3c, &now)
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() { errs[i] = st.Probe(ctx, "cli-someone") })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("probe %d: %v", i, err)
		}
	}
}
