package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sprout-paas/sprout/bundle"
	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/platform"
	"github.com/sprout-paas/sprout/rollout"
	"github.com/sprout-paas/sprout/runtime"
	"github.com/sprout-paas/sprout/source"
	"github.com/sprout-paas/sprout/store"
)

// Deploy steps, named the same in progress, events and version records.
const (
	StepFetch  = "fetch"
	StepListen = "listen"
	StepUnpack = "unpack"
	StepBuild  = "build"
	StepStart  = "start"
	StepHealth = "health"
	// StepEvaluate is a TrafficSplitting canary's evaluation.
	StepEvaluate = "evaluate"
	StepSwap     = "swap"
	StepDrain    = "drain"
	StepRetire   = "retire"
	StepRecord   = "record"
)

// Settings are per-app settings a deploy may change. Nil fields keep the
// app's current value.
type Settings struct {
	Port             *int
	ContainerPort    *int
	HealthPath       *string
	HealthInterval   *time.Duration
	HealthTimeout    *time.Duration
	HealthyThreshold *int
	HealthGrace      *time.Duration
	HealthDeadline   *time.Duration
	// Instances is how many instances the app runs; the others are its
	// deployment policy (see rollout.Settings).
	Instances     *int
	Policy        *string
	BatchSizeType *string
	BatchSize     *int
	// CanaryPercent and EvaluationTime are TrafficSplitting's.
	CanaryPercent  *int
	EvaluationTime *time.Duration
	// Domains, when set, replace the app's domains (see ValidateDomains);
	// HTTPSRedirect and HSTSMaxAge say how the shared ports serve them.
	Domains       *[]string
	HTTPSRedirect *bool
	HSTSMaxAge    *int
}

// apply returns app with the settings changed, validated.
func (s Settings) apply(app store.App) (store.App, error) {
	set := func(dst, src *int) {
		if src != nil {
			*dst = *src
		}
	}
	setD := func(dst, src *time.Duration) {
		if src != nil {
			*dst = *src
		}
	}
	set(&app.Port, s.Port)
	set(&app.ContainerPort, s.ContainerPort)
	if s.HealthPath != nil {
		app.Health.Path = *s.HealthPath
	}
	setD(&app.Health.Interval, s.HealthInterval)
	setD(&app.Health.Timeout, s.HealthTimeout)
	set(&app.Health.HealthyThreshold, s.HealthyThreshold)
	setD(&app.Health.Grace, s.HealthGrace)
	setD(&app.Health.Deadline, s.HealthDeadline)
	set(&app.Capacity, s.Instances)
	set(&app.Rollout.BatchSize, s.BatchSize)
	set(&app.Rollout.NewVersionPercent, s.CanaryPercent)
	setD(&app.Rollout.EvaluationTime, s.EvaluationTime)
	if p := app.Rollout.NewVersionPercent; p < 0 || p > 100 {
		return app, fmt.Errorf("%w: canary percent %d must be from 1 to 100", ErrInvalid, p)
	}
	if app.Rollout.EvaluationTime < 0 {
		return app, fmt.Errorf("%w: evaluation time must be positive", ErrInvalid)
	}
	if s.Policy != nil {
		p, err := rollout.ParsePolicy(*s.Policy)
		if err != nil {
			return app, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		app.Rollout.Policy = string(p)
	}
	if s.BatchSizeType != nil {
		t, err := rollout.ParseBatchSizeType(*s.BatchSizeType)
		if err != nil {
			return app, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		app.Rollout.BatchSizeType = string(t)
	}
	if n := app.InstanceCount(); n > rollout.MaxInstances {
		return app, fmt.Errorf("%w: %d instances is more than the %d one host runs", ErrInvalid, n, rollout.MaxInstances)
	}
	if app.Capacity < 0 || app.Rollout.BatchSize < 0 {
		return app, fmt.Errorf("%w: instances and batch size must be positive", ErrInvalid)
	}
	if app.Port < 1 || app.Port > 65535 {
		return app, fmt.Errorf("%w: port %d must be between 1 and 65535", ErrInvalid, app.Port)
	}
	if app.ContainerPort < 0 || app.ContainerPort > 65535 {
		return app, fmt.Errorf("%w: container port %d must be between 1 and 65535", ErrInvalid, app.ContainerPort)
	}
	if err := app.Health.Validate(); err != nil {
		return app, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if s.Domains != nil {
		names, err := ValidateDomains(*s.Domains)
		if err != nil {
			return app, err
		}
		app.Domains = names
	}
	if s.HTTPSRedirect != nil {
		app.HTTPS.NoRedirect = !*s.HTTPSRedirect
	}
	set(&app.HTTPS.HSTSMaxAge, s.HSTSMaxAge)
	if app.HTTPS.HSTSMaxAge < 0 {
		return app, fmt.Errorf("%w: --hsts %d: give the max-age in seconds (31536000 is a year), or 0 for none", ErrInvalid, app.HTTPS.HSTSMaxAge)
	}
	return app, nil
}

// DeployRequest asks for a new version of an app from a bundle on disk.
type DeployRequest struct {
	App   string
	Label string
	// BundlePath is an archive in the data dir; the agent removes it.
	BundlePath string
	// From, instead of BundlePath, names a bundle the agent fetches
	// itself: s3://bucket/key or a git URL#ref.
	From string
	// Source says where the bundle came from, for the record, and Commit
	// which git commit it is, when known (git push).
	Source string
	Commit string
	// Env, when not nil, replaces the app's environment properties if the
	// version becomes healthy (pull mode).
	Env      map[string]string
	Settings Settings
	NoWait   bool
}

// StepError says which deploy step failed.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return e.Step + ": " + e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// ErrNoPort means nothing says which port the app listens on.
var ErrNoPort = errors.New("the bundle does not say which port the app listens on: add EXPOSE 8080 to the Dockerfile, a Ports entry to Dockerrun.aws.json, or pass --container-port")

// Deploy builds and runs a new version of an app and swaps it in. When any
// step fails, the serving version keeps serving and the new one's leftovers
// are removed; the version is recorded as failed with the step and reason.
func (a *Agent) Deploy(ctx context.Context, req DeployRequest, p Progress) (*store.Version, error) {
	if req.BundlePath != "" {
		defer os.Remove(req.BundlePath)
	}
	if err := ValidateAppName(req.App); err != nil {
		return nil, err
	}
	if req.From != "" {
		if err := source.Check(req.From); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		req.Source = source.RedactRef(req.From)
		if a.fetcher == nil {
			return nil, fmt.Errorf("%w: this agent fetches no remote bundles", ErrInvalid)
		}
	}
	if req.Label != "" {
		if err := ValidateLabel(req.Label); err != nil {
			return nil, err
		}
	}
	ctx, unlock, err := a.lockRollout(ctx, rolloutLock{app: req.App, kind: "deploy", label: req.Label, noWait: req.NoWait, cancelled: a.recordCancelled(req)}, p)
	if err != nil {
		return nil, err
	}
	defer unlock()

	app, err := a.appOrNew(req.App)
	if err != nil {
		return nil, err
	}
	next, err := req.Settings.apply(*app)
	if err != nil {
		return nil, err
	}
	if req.Env != nil {
		next.Env = req.Env
	}
	label := req.Label
	if label == "" {
		label = "v" + strconv.FormatUint(a.store.NextSeq(req.App), 10)
	}
	if old, err := a.store.Version(req.App, label); err == nil && old.Status != store.StatusFailed {
		return nil, fmt.Errorf("%w: %s already has a version %s (%s); choose another --label, or `sprout rollback --app %s --to %s` to serve it again", ErrConflict, req.App, label, old.Status, req.App, label)
	}

	a.claims.Lock()
	err = a.checkDomainsFree(req.App, next.Domains)
	if err == nil && app.Serving == "" {
		// A new app exists from its first deploy on, so that a failed one
		// can be looked at with `sprout versions`.
		err = a.store.PutApp(&next)
	}
	a.claims.Unlock()
	if err != nil {
		return nil, err
	}
	v := &store.Version{App: req.App, Label: label, Status: store.StatusPending, Source: req.Source, Commit: req.Commit, CreatedAt: time.Now(), Steps: map[string]int64{}}
	if err := a.store.PutVersion(v); err != nil {
		return nil, err
	}
	a.event(req.App, label, "deploy", "deploy of %s started (from %s)", label, req.Source)
	tr := a.newTranscript(p, req.App, label)
	d := a.newDeployment("deploy", &next, app, v, tr)
	d.steps = v.Steps

	defer d.cleanup()
	archive := req.BundlePath
	if req.From != "" {
		archive, err = d.fetch(ctx, req.From)
		if archive != "" {
			defer os.Remove(archive)
		}
	}
	if err == nil {
		err = d.unpack(ctx, archive)
	}
	if t := d.v.Options.Deploy.Timeout; err == nil && t > 0 {
		// aws:elasticbeanstalk:command Timeout bounds the deploy up to
		// the swap.
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.start.Add(t))
		defer cancel()
	}
	if err == nil {
		err = d.build(ctx)
	}
	if err == nil {
		err = d.rollout(ctx)
	}
	if err != nil {
		err = d.fail(ctx, err)
		tr.close("deploy failed: " + err.Error())
		return v, err
	}
	tr.close("serving")
	a.event(req.App, label, "deploy", "%s is serving %s (deploy took %s)", label, servedAt(&next), time.Since(d.start).Round(time.Millisecond))
	return v, nil
}

// servedAt says where an app is served, in words.
func servedAt(app *store.App) string {
	if len(app.Domains) > 0 {
		return "at " + strings.Join(app.Domains, ", ")
	}
	return fmt.Sprintf("on port %d", app.Port)
}

func (a *Agent) appOrNew(name string) (*store.App, error) {
	app, err := a.store.App(name)
	if errors.Is(err, store.ErrNotFound) {
		return &store.App{Name: name, Port: a.cfg.DefaultPort, CreatedAt: time.Now()}, nil
	}
	return app, err
}

// deployment carries one deploy (or rollout) from step to step.
type deployment struct {
	a    *Agent
	op   string     // deploy, rollback, setenv, scale or recover
	app  *store.App // the app as it will be once this succeeds
	prev *store.App // the app as it was
	v    *store.Version
	p    Progress

	start    time.Time
	steps    map[string]int64 // how long each step took, in milliseconds
	step     string
	stepAt   time.Time
	builtTag string    // image tag made by this deploy, removed on failure
	lastPass time.Time // when the last passing health check ended
	// j records how to undo each step; fail replays it.
	j *journal
	// routing is how the rollout's instances get their requests.
	routing routing
	// run is the operation's record in InFlight; nil for a recovery.
	run     *runningRollout
	spec    *platform.Spec // what the bundle says, on a deploy
	workDir string         // the unpacked bundle, removed by cleanup
	root    string         // the bundle's root: in workDir, or kept
}

// newDeployment starts a rollout of v on app (prev is the app as it is),
// with its journal. The operation's record in InFlight (none for a
// recovery) follows it from here on, and its client hears that it began.
func (a *Agent) newDeployment(op string, app, prev *store.App, v *store.Version, p Progress) *deployment {
	d := &deployment{a: a, op: op, app: app, prev: prev, v: v, p: p, start: time.Now(), j: a.newJournal(app.Name, op, v.Label)}
	if op != "recover" {
		d.run = a.running(app.Name)
	}
	if d.run != nil {
		d.run.begins(v.Label)
	}
	return d
}

// listen opens the app's public port for this rollout; undoing it closes
// the port again.
func (d *deployment) listen() error {
	if err := d.a.router.Listen(d.app.Name, d.app.Port); err != nil {
		return err
	}
	return d.j.record(store.Undo{Kind: store.UndoClose, Port: d.app.Port, Label: d.v.Label})
}

// cleanup removes the unpacked bundle unless it is kept with the version.
func (d *deployment) cleanup() {
	if d.workDir != "" {
		os.RemoveAll(d.workDir)
	}
}

func (d *deployment) begin(step string) {
	d.end()
	d.step, d.stepAt = step, time.Now()
	if d.run != nil {
		d.run.at(step)
	}
	d.p.Step(step)
	d.a.event(d.app.Name, d.v.Label, "step", "%s of %s: %s", d.op, d.v.Label, step)
}

func (d *deployment) end() {
	if d.step != "" {
		if d.steps == nil {
			d.steps = map[string]int64{}
		}
		took := time.Since(d.stepAt)
		d.steps[d.step] = took.Milliseconds()
		d.a.metrics.Step(d.app.Name, d.step, took)
	}
	d.step = ""
}

func (d *deployment) linef(format string, args ...any) { d.p.Line(fmt.Sprintf(format, args...)) }

// runsHooks tells whether the rollout runs the version's predeploy and
// postdeploy hooks: a recovery or a scale changes neither the version nor
// its configuration, and runs none (as Elastic Beanstalk runs none for a
// capacity change).
func (d *deployment) runsHooks() bool { return d.op != "recover" && d.op != "scale" }

// resizes tells whether the rollout keeps the instances that serve and
// only brings their count to the app's (rollout.Scale), rather than
// replacing them.
func (d *deployment) resizes() bool { return d.op == "recover" || d.op == "scale" }

// fetch gets a remote bundle into an upload file and records where it
// came from: the object's ETag, the commit, and the bundle's SHA-256.
func (d *deployment) fetch(ctx context.Context, from string) (string, error) {
	a := d.a
	d.begin(StepFetch)
	f, err := a.NewUpload()
	if err != nil {
		return "", err
	}
	defer f.Close()
	got, err := a.fetcher.Fetch(ctx, from, f, a.cfg.MaxUploadBytes, func(s string) { d.linef("%s", s) })
	kind := "git"
	if strings.HasPrefix(from, "s3://") {
		kind = "s3"
	}
	a.metrics.Fetch(d.app.Name, kind, fetchResult(err))
	if err != nil {
		return f.Name(), err
	}
	d.v.ETag, d.v.Commit, d.v.SHA256 = got.ETag, got.Commit, got.SHA256
	switch {
	case got.Commit != "":
		d.linef("fetched commit %s of %s (%d bytes packed)", got.Commit, got.Ref, got.Bytes)
	default:
		d.linef("fetched %s: %d bytes, ETag %s, sha256 %s", got.Ref, got.Bytes, got.ETag, got.SHA256[:16])
	}
	if err := a.store.PutVersion(d.v); err != nil {
		return f.Name(), err
	}
	return f.Name(), f.Close()
}

// unpack opens the app's port when it is new, unpacks the bundle and
// checks what it says, before anything is built or stopped.
func (d *deployment) unpack(ctx context.Context, archive string) error {
	a := d.a
	d.begin(StepUnpack)
	d.workDir = filepath.Join(bundlesDir(a.cfg), d.app.Name+"-"+d.v.Label+"-"+randomID(3))
	res, err := bundle.UnpackFile(archive, d.workDir, a.cfg.Bundle)
	if err != nil {
		return err
	}
	d.root = res.Root
	d.linef("unpacked %d files (%d bytes) from a %s archive", res.Files, res.Bytes, res.Format)
	spec, err := platform.Inspect(res.Root)
	if err != nil {
		return err
	}
	d.spec = spec
	d.v.Kind, d.v.Run, d.v.Options, d.v.Hooks = string(spec.Kind), spec.Run, spec.Options, spec.Hooks
	d.describe(spec)
	if needsBundle(spec) {
		// Hooks run again on rollbacks and configuration changes, and
		// Dockerrun may mount the bundle's own files: keep it.
		kept := keptBundleDir(a.cfg, d.app.Name, d.v.Label)
		os.RemoveAll(kept)
		if err := os.MkdirAll(filepath.Dir(kept), 0o700); err != nil {
			return err
		}
		if err := os.Rename(res.Root, kept); err != nil {
			return fmt.Errorf("keep the bundle: %w", err)
		}
		d.root, d.v.BundleDir = kept, kept
	}
	for _, b := range spec.Run.Binds {
		if _, err := a.hostDir(d.v, b.HostDir); err != nil {
			return err
		}
	}
	// Open a new public port before anything is built, so that a port
	// clash fails the deploy first.
	d.routing = d.routingFor()
	if err := d.routing.open(d); err != nil {
		return err
	}
	return nil
}

// needsBundle tells whether a version needs its unpacked bundle after
// the deploy.
func needsBundle(spec *platform.Spec) bool {
	return len(spec.Hooks) > 0 || slices.ContainsFunc(spec.Run.Binds, func(b platform.Bind) bool {
		return b.HostDir == platform.BundleDir || strings.HasPrefix(b.HostDir, platform.BundleDir+"/")
	})
}

// describe says what the bundle asks for, beyond its image.
func (d *deployment) describe(spec *platform.Spec) {
	for _, n := range spec.Notes {
		d.linef("note: %s", n)
	}
	o := spec.Options
	if len(o.Env) > 0 {
		d.linef(".ebextensions: %d environment properties (%s); values set with `sprout setenv` win", len(o.Env), strings.Join(slices.Sorted(maps.Keys(o.Env)), ", "))
	}
	if o.HealthPath != "" {
		d.linef(".ebextensions: health check URL %s (a --health-path given to deploy wins)", o.HealthPath)
	}
	if p := o.Deploy.String(); p != "" {
		d.linef(".ebextensions: %s (the app's own --policy and --batch-size win)", p)
	}
	if o.Deploy.IgnoreHealthCheck {
		d.linef("warning: IgnoreHealthCheck is true: a version whose health check still fails at the deadline is swapped in anyway, if its container runs")
	}
	if o.ProxyNone {
		d.linef("ProxyServer none: the container's port is published straight on port %d, without Sprout's proxy; deploys then have downtime (the old container stops before the new one starts)", d.app.Port)
	}
	r := spec.Run
	if len(r.Entrypoint) > 0 {
		d.linef("Dockerrun.aws.json: entrypoint %q", r.Entrypoint)
	}
	if len(r.Command) > 0 {
		d.linef("Dockerrun.aws.json: command %q", r.Command)
	}
	for _, b := range r.Binds {
		d.linef("Dockerrun.aws.json: host directory %s mounted at %s", b.HostDir, b.ContainerDir)
	}
	if r.LogDir != "" {
		d.linef("Dockerrun.aws.json: log files written to %s are kept on the host (`sprout logs --app %s --files`)", r.LogDir, d.app.Name)
	}
	for _, st := range []string{platform.StagePrebuild, platform.StagePredeploy, platform.StagePostdeploy} {
		if hs := spec.Hooks.Stage(st, false); len(hs) > 0 {
			d.linef(".platform: %d %s hook(s)", len(hs), st)
		}
	}
	confighooks := 0
	for _, h := range spec.Hooks {
		if h.Config {
			confighooks++
		}
	}
	if n := confighooks; n > 0 {
		d.linef(".platform: %d confighook(s), run by `sprout setenv`", n)
	}
}

// build runs the prebuild hooks and builds (or finds) the image.
func (d *deployment) build(ctx context.Context) error {
	a := d.a
	spec := d.spec
	if err := d.runHooks(ctx, platform.StagePrebuild, false, platform.Effective(d.v.Options.Env, d.app.Env)); err != nil {
		return err
	}
	d.begin(StepBuild)
	tag := a.imageTag(d.app.Name, d.v.Label)
	labels := map[string]string{runtime.LabelAgent: a.id, runtime.LabelApp: d.app.Name, runtime.LabelLabel: d.v.Label}
	out := &lineWriter{p: d.p}
	var err error
	switch spec.Kind {
	case platform.KindDockerfile:
		d.linef("building image %s", tag)
		_, err = a.rt.Build(ctx, d.root, tag, labels, out)
	case platform.KindImage:
		if err = a.rt.EnsureImage(ctx, spec.Image, spec.ImageUpdate, out); err == nil {
			err = a.rt.Tag(ctx, spec.Image, tag)
		}
	}
	out.Flush()
	if err != nil {
		return err
	}
	d.builtTag = tag
	info, err := a.rt.Image(ctx, tag)
	if err != nil {
		return err
	}
	d.v.Image, d.v.ImageID, d.v.HasHealthcheck, d.v.ImageVolumes = tag, info.ID, info.HasHealthcheck, info.Volumes
	d.v.ContainerPort = cmp.Or(d.app.ContainerPort, spec.ContainerPort, info.ExposedPort)
	if d.v.ContainerPort == 0 {
		return ErrNoPort
	}
	d.linef("image %s ready (%s), app listens on container port %d", tag, shortID(info.ID), d.v.ContainerPort)
	own, _ := a.ownVolumes(ctx, d.app.Name)
	for _, vol := range appVolumes(d.app, d.v) {
		d.linef("%s is kept across deploys in volume %s", vol.Path, a.volumeName(own, d.app.Name, vol.Name))
	}
	return a.store.PutVersion(d.v)
}

// rollout replaces the app's instances with instances of d.v, healthy
// before they take traffic, and records the result. The version's hooks
// run at the same points as on Elastic Beanstalk: predeploy before the
// first container starts, postdeploy once the new instances serve; a
// failing postdeploy hook undoes the rollout. Every rollout follows its
// deployment policy's plan (runPlan), through the version's routing
// strategy.
func (d *deployment) rollout(ctx context.Context) error {
	a := d.a
	env := platform.Effective(d.v.Options.Env, d.app.Env)
	config := d.op == "setenv"
	if d.routing == nil {
		d.routing = d.routingFor()
	}
	if config {
		if err := d.runHooks(ctx, platform.StagePrebuild, true, env); err != nil {
			return err
		}
	}
	if d.runsHooks() {
		if err := d.runHooks(ctx, platform.StagePredeploy, config, env); err != nil {
			return err
		}
	}
	if _, direct := d.routing.(*directRouting); direct {
		if err := d.directRefused(); err != nil {
			return err
		}
	}
	if most := d.routing.most(); most > 0 && d.app.InstanceCount() > most {
		return fmt.Errorf("%w: ProxyServer none publishes one container on port %d, so the app can run only %d instance (it has %d): use the proxy, or `sprout scale --app %s %d`", ErrInvalid, d.app.Port, most, d.app.InstanceCount(), d.app.Name, most)
	}
	if err := d.runPlan(ctx, env, config); err != nil {
		return err
	}
	ctx = context.WithoutCancel(ctx)
	d.routing.leave(d)

	d.begin(StepRecord)
	d.end()
	now := time.Now()
	if d.prev.Serving != "" && d.prev.Serving != d.v.Label {
		if old, err := a.store.Version(d.app.Name, d.prev.Serving); err == nil {
			old.Status = store.StatusRetired
			a.store.PutVersion(old)
		}
		// Its requests are history: series are kept for the versions an
		// app serves only.
		a.metrics.ForgetVersion(d.app.Name, d.prev.Serving)
		a.tracker.ForgetVersion(d.app.Name, d.prev.Serving)
	}
	d.v.Status, d.v.FailedStep, d.v.Error = store.StatusServing, "", ""
	d.app.Serving = d.v.Label
	if !d.resizes() {
		// A scale or a recovery runs the version that served on another
		// count: it serves since it did.
		d.v.DeployedAt, d.app.ServingAt = now, now
	}
	if err := a.store.PutVersion(d.v); err != nil {
		return err
	}
	if err := a.store.PutApp(d.app); err != nil {
		return err
	}
	a.metrics.DeployDone(d.app.Name, d.op, "success")
	a.metrics.Serving(d.app.Name, d.v.Label)
	a.pruneImages(ctx, d.app.Name, d.p)
	return nil
}

// containerSpec says how to run one container of d.v.
func (d *deployment) containerSpec(name string, env map[string]string, mounts []runtime.Mount, publicPort int) runtime.ContainerSpec {
	a := d.a
	return runtime.ContainerSpec{
		Name:          name,
		Image:         d.v.Image,
		Env:           containerEnv(env, d.app.Name, d.v.Label, d.v.ContainerPort),
		Entrypoint:    d.v.Run.Entrypoint,
		Cmd:           d.v.Run.Command,
		Mounts:        mounts,
		PublicPort:    publicPort,
		PublicIP:      a.cfg.BindAddress,
		ContainerPort: d.v.ContainerPort,
		Labels:        map[string]string{runtime.LabelAgent: a.id, runtime.LabelApp: d.app.Name, runtime.LabelLabel: d.v.Label},
		StopGrace:     a.cfg.StopGrace,
		LogMaxSize:    a.cfg.LogMaxSize,
		LogMaxFiles:   a.cfg.LogMaxFiles,
	}
}

// containerEnv lists env for the engine. It adds PORT (as Heroku and
// Elastic Beanstalk do) unless the app sets it, and SPROUT_APP and
// SPROUT_VERSION so the app can say which version it is.
func containerEnv(env map[string]string, app, label string, port int) []string {
	out := make([]string, 0, len(env)+3)
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	if _, ok := env["PORT"]; !ok {
		out = append(out, "PORT="+strconv.Itoa(port))
	}
	return append(out, "SPROUT_APP="+app, "SPROUT_VERSION="+label)
}

// waitHealthy waits for c to pass its health check, streaming each result
// to line (prefixed with who) and returning when the last passing check
// ended.
func (d *deployment) waitHealthy(ctx context.Context, c *runtime.Container, who string, line func(string)) (lastPass time.Time, err error) {
	a := d.a
	s := a.healthFor(d.app, d.v)
	probe, what := a.probeFor(s, d.v.HasHealthcheck, c.ID, c.Addr, d.v.ContainerPort)
	say := func(format string, args ...any) { line(who + fmt.Sprintf(format, args...)) }
	say("waiting until %s %d times in a row (every %s, deadline %s)", what, s.HealthyThreshold, s.Interval, s.Deadline)
	started := time.Now()
	n := 0
	alive := func(ctx context.Context) error {
		st, err := a.rt.State(ctx, c.ID)
		if err != nil {
			return fmt.Errorf("the container is gone: %w", err)
		}
		switch {
		case st.OOMKilled:
			return errors.New("the container ran out of memory and was killed")
		case st.RestartCount > 0:
			return fmt.Errorf("the container keeps crashing: it exited with code %d and was restarted %d times", st.ExitCode, st.RestartCount)
		case !st.Running:
			return fmt.Errorf("the container exited with code %d", st.ExitCode)
		}
		return nil
	}
	err = health.Wait(ctx, probe, s, alive, func(r health.Result) {
		n++
		elapsed := time.Since(started).Round(100 * time.Millisecond)
		if r.OK() {
			lastPass = r.At.Add(r.Took)
			say("check %d passed (%s) after %s", n, r.Took.Round(time.Millisecond), elapsed)
		} else {
			say("check %d failed after %s: %s", n, elapsed, r.Err)
		}
	})
	if err == nil {
		return lastPass, nil
	}
	var we *health.WaitError
	if errors.As(err, &we) && we.Deadline && d.v.Options.Deploy.IgnoreHealthCheck {
		if aerr := alive(ctx); aerr == nil {
			say("warning: %s; swapping %s in anyway because IgnoreHealthCheck is true (.ebextensions)", we.Reason, d.v.Label)
			return time.Now(), nil
		}
	}
	if errors.As(err, &we) {
		var b strings.Builder
		b.WriteString(we.Reason)
		if len(we.Last) > 0 {
			b.WriteString("\nlast health checks:")
			for _, r := range we.Last {
				b.WriteString("\n  " + r.String())
			}
		}
		if logs, lerr := a.rt.Logs(context.WithoutCancel(ctx), c.ID, 20); lerr == nil && strings.TrimSpace(logs) != "" {
			b.WriteString("\nlast lines of the container's log:\n")
			for _, l := range strings.Split(strings.TrimRight(logs, "\n"), "\n") {
				b.WriteString("  " + l + "\n")
			}
		}
		return lastPass, errors.New(strings.TrimRight(b.String(), "\n"))
	}
	return lastPass, err
}

// fail undoes what this deploy created and records why it failed. The
// version that was serving is never touched. ctx is the rollout's: it
// tells an abort from a cancellation by the agent.
func (d *deployment) fail(ctx context.Context, err error) error {
	a := d.a
	cause := context.Cause(ctx)
	ctx = context.WithoutCancel(ctx)
	step := d.step
	d.end()
	a.metrics.DeployDone(d.app.Name, d.op, "failed")
	if d.j.committed {
		// Past the commit the new version serves; a failure to record is
		// reported but nothing is rolled back.
		a.log.Error("deploy finished with an error after the swap", "app", d.app.Name, "error", err)
		return &StepError{Step: step, Err: err}
	}
	if errors.Is(cause, ErrAborted) {
		back := "removing what it started"
		if d.prev.Serving != "" {
			back = "every instance goes back to " + d.prev.Serving
		}
		d.linef("%v: %s", ErrAborted, back)
	}
	d.j.undo(ctx, d.p)
	if d.builtTag != "" {
		a.rt.RemoveImage(ctx, d.builtTag)
	}
	switch {
	case errors.Is(cause, ErrAborted):
		err = ErrAborted
	case errors.Is(err, context.Canceled):
		// No client cancels an operation (see operations.go): only the
		// agent, stopping, or an environment's rollout that moved on.
		err = fmt.Errorf("the %s was cancelled on the agent (it stopped, or its environment's rollout moved on)", d.op)
	}
	if t := d.v.Options.Deploy.Timeout; errors.Is(err, context.DeadlineExceeded) && t > 0 {
		err = fmt.Errorf("the deploy ran past its Timeout of %s (aws:elasticbeanstalk:command in .ebextensions): %w", t, err)
	}
	if d.op == "deploy" && d.v.BundleDir != "" {
		os.RemoveAll(d.v.BundleDir)
		d.v.BundleDir = ""
	}
	d.v.Status, d.v.FailedStep, d.v.Error = store.StatusFailed, step, err.Error()
	a.store.PutVersion(d.v)
	serving := "nothing was serving before"
	if d.prev.Serving != "" {
		serving = d.prev.Serving + " keeps serving"
	}
	a.event(d.app.Name, d.v.Label, "deploy-failed", "%s of %s failed at %s; %s: %s", d.op, d.v.Label, step, serving, firstLine(err.Error()))
	return &StepError{Step: step, Err: err}
}

// pruneImages removes the images of versions beyond the newest
// KeepVersions that are not serving.
func (a *Agent) pruneImages(ctx context.Context, app string, p Progress) {
	versions, err := a.store.Versions(app)
	if err != nil {
		return
	}
	kept := 0
	for _, v := range versions {
		if v.Status == store.StatusFailed || v.ImagePruned || v.Image == "" || v.Status == store.StatusServing {
			continue
		}
		if kept < a.cfg.KeepVersions {
			kept++
			continue
		}
		if err := a.removeImage(ctx, v.Image); err != nil {
			a.log.Warn("prune image", "image", v.Image, "error", err)
			continue
		}
		v.ImagePruned = true
		if v.BundleDir != "" {
			os.RemoveAll(v.BundleDir)
			v.BundleDir = ""
		}
		a.store.PutVersion(v)
		p.Line(fmt.Sprintf("pruned the image of %s (keeping %d earlier versions for rollback)", v.Label, a.cfg.KeepVersions))
	}
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// fetchResult names a fetch's outcome for the metrics.
func fetchResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, source.ErrNotFound):
		return "not_found"
	case errors.Is(err, source.ErrDenied):
		return "denied"
	case errors.Is(err, source.ErrTooLarge):
		return "too_large"
	case errors.Is(err, source.ErrInvalid):
		return "invalid"
	}
	return "error"
}
