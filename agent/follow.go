package agent

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sprout-paas/sprout/platform"
	"github.com/sprout-paas/sprout/source"
	"github.com/sprout-paas/sprout/store"
)

// Pull mode: an app that follows a manifest in S3 converges on the version
// the manifest names. The agent polls the manifest with conditional GETs
// (ETag), and deploys a change with the same health-gated swap; a
// manifest it cannot read or deploy leaves the serving version serving
// and says why in the app's events, once per manifest change.

// DefaultWatchInterval is how often manifests are polled.
const DefaultWatchInterval = 10 * time.Second

// FollowState is what the agent knows of an app's manifest.
type FollowState struct {
	Manifest  string    `json:"manifest"`
	ETag      string    `json:"etag,omitempty"`
	CheckedAt time.Time `json:"checked_at,omitzero"`
	// Result says what the last change of the manifest led to.
	Result string `json:"result,omitempty"`
}

type follower struct {
	mu      sync.Mutex
	state   map[string]*FollowState
	running map[string]bool
	poke    chan struct{}
}

func (f *follower) init() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == nil {
		f.state, f.running, f.poke = map[string]*FollowState{}, map[string]bool{}, make(chan struct{}, 1)
	}
}

// forget drops what is known of app's manifest.
func (f *follower) forget(app string) {
	f.init()
	f.mu.Lock()
	delete(f.state, app)
	f.mu.Unlock()
}

// Following returns the follow state of app, nil when it follows no
// manifest.
func (a *Agent) Following(app string) *FollowState {
	a.manifests.init()
	a.manifests.mu.Lock()
	defer a.manifests.mu.Unlock()
	if st, ok := a.manifests.state[app]; ok {
		c := *st
		return &c
	}
	return nil
}

// SetWatch makes app follow the manifest at ref (s3://bucket/key), or
// stop following when ref is empty. A new app gets port when it is not 0.
func (a *Agent) SetWatch(ctx context.Context, name, ref string, port int) error {
	if err := ValidateAppName(name); err != nil {
		return err
	}
	if ref != "" {
		if _, err := source.ParseS3URL(ref); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		if a.fetcher == nil {
			return fmt.Errorf("%w: this agent reads no manifests", ErrInvalid)
		}
	}
	if port < 0 || port > 65535 {
		return fmt.Errorf("%w: port %d", ErrInvalid, port)
	}
	unlock, err := a.lock(ctx, name, false, nopProgress{})
	if err != nil {
		return err
	}
	defer unlock()
	app, err := a.appOrNew(name)
	if err != nil {
		return err
	}
	if app.Watch == ref && (port == 0 || app.Port == port) {
		return nil
	}
	app.Watch = ref
	if port != 0 && app.Serving == "" {
		app.Port = port
	}
	if err := a.store.PutApp(app); err != nil {
		return err
	}
	a.manifests.forget(name)
	if ref == "" {
		a.event(name, "", "watch", "stopped following a manifest")
		return nil
	}
	a.event(name, "", "watch", "following %s", ref)
	a.PollManifests()
	return nil
}

// PollManifests makes the follow loop look at every manifest now.
func (a *Agent) PollManifests() {
	a.manifests.init()
	select {
	case a.manifests.poke <- struct{}{}:
	default:
	}
}

// Follow polls the manifests of following apps every interval until ctx
// ends.
func (a *Agent) Follow(ctx context.Context, interval time.Duration) {
	a.manifests.init()
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	for {
		apps, _ := a.store.Apps()
		for _, app := range apps {
			if app.Watch != "" {
				a.pollAsync(ctx, app.Name, app.Watch)
			}
		}
		// ±10% of jitter, so that a fleet started together does not
		// poll S3 in step.
		t := time.NewTimer(interval + time.Duration((rand.Float64()-0.5)*0.2*float64(interval)))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-a.manifests.poke:
			t.Stop()
		}
	}
}

// pollAsync polls one app's manifest unless a poll of it still runs (a
// deploy may take minutes).
func (a *Agent) pollAsync(ctx context.Context, app, ref string) {
	f := &a.manifests
	f.mu.Lock()
	if f.running[app] {
		f.mu.Unlock()
		return
	}
	f.running[app] = true
	st := f.state[app]
	if st == nil || st.Manifest != ref {
		st = &FollowState{Manifest: ref}
		f.state[app] = st
	}
	etag := st.ETag
	f.mu.Unlock()
	go func() {
		result, newETag, changed := a.poll(ctx, app, ref, etag)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.running[app] = false
		if cur := f.state[app]; cur == st {
			st.CheckedAt = time.Now()
			if changed {
				st.ETag, st.Result = newETag, result
			}
		}
	}()
}

// poll reads the manifest when it changed since etag and converges on it.
// A manifest that cannot be read is retried at the next poll; one that
// cannot be deployed waits for the manifest to change.
func (a *Agent) poll(ctx context.Context, app, ref, etag string) (result, newETag string, changed bool) {
	body, newETag, changed, err := a.fetcher.GetIfChanged(ctx, ref, etag)
	outcome := fetchResult(err)
	if err == nil && !changed {
		outcome = "unchanged"
	}
	a.metrics.Fetch(app, "manifest", outcome)
	if err != nil {
		a.noteOnce(app, fmt.Sprintf("cannot read the manifest %s: %v", ref, err))
		return "", "", false
	}
	if !changed {
		return "", etag, false
	}
	m, err := source.ParseManifest(body)
	if err == nil {
		err = a.converge(ctx, app, ref, m)
	}
	cur, _ := a.store.App(app)
	serving := "nothing"
	if cur != nil && cur.Serving != "" {
		serving = cur.Serving
	}
	if err != nil {
		// Name the version the manifest wants, as the fleet's operator
		// knows it by its label (a manifest that cannot be read names none).
		wants := ""
		if m != nil {
			wants = " wants " + m.Label + ","
		}
		result = fmt.Sprintf("manifest %s (ETag %s)%s not applied: %s; %s keeps serving", ref, newETag, wants, firstLine(err.Error()), serving)
		a.event(app, "", "watch-failed", "%s", result)
		return result, newETag, true
	}
	return fmt.Sprintf("serving %s as manifest %s (ETag %s) says", serving, ref, newETag), newETag, true
}

// noteOnce records a follow problem as an event unless it is the same as
// the last one recorded.
func (a *Agent) noteOnce(app, msg string) {
	f := &a.manifests
	f.mu.Lock()
	st := f.state[app]
	same := st != nil && st.Result == msg
	if st != nil {
		st.Result = msg
	}
	f.mu.Unlock()
	if !same {
		a.event(app, "", "watch-failed", "%s", msg)
	}
}

// converge serves what m names: nothing when it serves already; an
// environment change; a version the host still has (served again); or a
// new version fetched from the manifest's bundle.
func (a *Agent) converge(ctx context.Context, app, ref string, m *source.Manifest) error {
	if m.App != "" && m.App != app {
		return fmt.Errorf("%w: the manifest is for app %s, not %s", ErrInvalid, m.App, app)
	}
	env := m.Env
	if env == nil {
		env = map[string]string{}
	}
	if err := platform.ValidateEnv(env); err != nil {
		return fmt.Errorf("%w: the manifest's env: %v", ErrInvalid, err)
	}
	cur, err := a.appOrNew(app)
	if err != nil {
		return err
	}
	p := &logProgress{log: a.log.With("app", app, "op", "manifest")}
	ctx = WithStartedBy(ctx, "manifest "+source.RedactRef(ref))
	a.event(app, m.Label, "watch", "manifest %s names %s", ref, m.Label)
	if cur.Serving == m.Label {
		if maps.Equal(cur.Env, env) {
			return nil
		}
		return a.reconfigure(ctx, app, false, p, "environment changed by the manifest", func(c *store.App) error {
			c.Env = env
			return nil
		})
	}
	if v, err := a.store.Version(app, m.Label); err == nil && v.Status != store.StatusFailed && v.Status != store.StatusPending && !v.ImagePruned {
		_, err := a.rollback(ctx, app, m.Label, env, false, p)
		return err
	}
	bundle, err := m.BundleRef(ref)
	if err != nil {
		return err
	}
	req := DeployRequest{App: app, Label: m.Label, From: bundle, Env: env}
	if m.Port != 0 {
		req.Settings.Port = &m.Port
	}
	_, err = a.Deploy(ctx, req, p)
	return err
}

type nopProgress struct{}

func (nopProgress) Step(string) {}
func (nopProgress) Line(string) {}
