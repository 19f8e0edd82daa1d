package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/sprout-paas/sprout/platform"
	"github.com/sprout-paas/sprout/rollout"
	"github.com/sprout-paas/sprout/source"
)

// FormatVersion is the format of the documents this Sprout writes. A
// reader refuses a higher one: rewriting a document it does not fully
// understand would drop what a newer Sprout wrote.
const FormatVersion = 1

// Errors a caller can tell apart. Each error's text is one sentence that
// names the fix.
var (
	// ErrInvalid is package rollout's, so that a caller checks one
	// sentinel for every bad input of a deploy.
	ErrInvalid = rollout.ErrInvalid
	// ErrBusy says a rollout is in flight; the error is a *BusyError.
	ErrBusy = errors.New("a rollout is in flight")
	// ErrNotInFlight says there is no rollout to abort.
	ErrNotInFlight = errors.New("no rollout in flight")
	// ErrNoHosts says no host of the environment reported recently.
	ErrNoHosts = errors.New("no host reports")
	// ErrNewerFormat says a document was written by a newer Sprout.
	ErrNewerFormat = errors.New("written by a newer Sprout")
)

type invalidError string

func (e invalidError) Error() string        { return string(e) }
func (e invalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(format string, a ...any) error { return invalidError(fmt.Sprintf(format, a...)) }

// nameRe is what a host id, app name or label may be: each becomes part
// of an S3 key.
var nameRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// checkName checks what becomes part of a key; what names it in the error.
func checkName(what, name string) error {
	if !nameRe.MatchString(name) {
		return invalid("%s %q cannot name an object in S3: use letters, digits, _ . - (not first), at most 128 characters", what, name)
	}
	return nil
}

// ValidateHostID checks a host id: it names the host's report object.
func ValidateHostID(id string) error { return checkName("host id", id) }

// State is a rollout's state; docs/fleet.md has the table of transitions.
type State string

// The states. A rollout goes running → succeeded (Immutable: preparing →
// switching → succeeded; TrafficSplitting: running → evaluating →
// running → succeeded), or on a failure or an abort rolling-back →
// rolled-back; failed when there is nothing to return to.
const (
	StateRunning     State = "running"
	StateEvaluating  State = "evaluating"
	StatePreparing   State = "preparing"
	StateSwitching   State = "switching"
	StateRollingBack State = "rolling-back"
	StateSucceeded   State = "succeeded"
	StateRolledBack  State = "rolled-back"
	StateFailed      State = "failed"
)

// Terminal tells whether a rollout in this state is over: its document
// never changes again, and the next rollout may replace it.
func (s State) Terminal() bool {
	return s == StateSucceeded || s == StateRolledBack || s == StateFailed
}

// HostState is where one host of a rollout stands.
type HostState string

// The host states.
const (
	// HostPending: its batch has not started.
	HostPending HostState = "pending"
	// HostMoving: told to move (deploy, prepare or switch), not there yet.
	HostMoving HostState = "moving"
	// HostPrepared: Immutable, the release runs healthy beside the old.
	HostPrepared HostState = "prepared"
	// HostHealthy: serves the release, healthy for StableFor.
	HostHealthy HostState = "healthy"
	// HostFailed: its attempt failed, or it missed HostDeadline.
	HostFailed HostState = "failed"
	// HostLost: no report for LostAfter; left out from then on.
	HostLost HostState = "lost"
)

// Release is a version of an app as hosts fetch and run it.
type Release struct {
	App   string `json:"app"`
	Label string `json:"label"`
	// Bundle is where the version's bundle is: s3://bucket/key.
	Bundle string `json:"bundle"`
	// ETag and SHA256 are the bundle's, as uploaded: a host that fetches
	// other bytes fails.
	ETag   string            `json:"etag,omitempty"`
	SHA256 string            `json:"sha256,omitempty"`
	Env    map[string]string `json:"env,omitempty"`
	Port   int               `json:"port,omitempty"`
	// Settings are the app's own settings on each host (health check,
	// instances, the per-host deployment policy...), as the deploy API's
	// query parameters, kept for the app's later deploys as a local
	// deploy's flags are.
	Settings map[string]string `json:"settings,omitempty"`
}

// Validate reports the first field a host could not act on.
func (r Release) Validate() error {
	if err := checkName("app name", r.App); err != nil {
		return err
	}
	if err := checkName("version label", r.Label); err != nil {
		return err
	}
	if _, err := source.ParseS3URL(r.Bundle); err != nil {
		return invalid("the bundle %q is not s3://bucket/key: upload it as an application version first", r.Bundle)
	}
	if err := platform.ValidateEnv(r.Env); err != nil {
		return invalid("the environment properties: %v", err)
	}
	if r.Port < 0 || r.Port > 65535 {
		return invalid("port %d is not a port: use 1 to 65535, or 0 to keep the app's", r.Port)
	}
	return nil
}

// Duration is a time.Duration written in JSON as Go spells it ("2s"), so
// that people can read the documents.
type Duration time.Duration

// MarshalJSON writes "2s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "2s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"2s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// Settings are a rollout's parameters, frozen when it is published so that
// every evaluator judges alike. The first five are Elastic Beanstalk's, as
// package rollout has them, counting hosts instead of instances.
type Settings struct {
	Policy            rollout.Policy        `json:"policy"`
	BatchSizeType     rollout.BatchSizeType `json:"batch_size_type"`
	BatchSize         int                   `json:"batch_size"`
	NewVersionPercent int                   `json:"new_version_percent"`
	EvaluationTime    Duration              `json:"evaluation_time"`
	// StableFor is how long a host must serve the release healthy before
	// it counts.
	StableFor Duration `json:"stable_for"`
	// LostAfter is how old a host's last report may grow before the host
	// is lost and left out.
	LostAfter Duration `json:"lost_after"`
	// HostDeadline is how long a host may take to get where it was told
	// (and a rollback to come back) before it counts as failed.
	HostDeadline Duration `json:"host_deadline"`
}

// The fleet's defaults.
const (
	DefaultStableFor    = 2 * time.Second
	DefaultLostAfter    = 30 * time.Second
	DefaultHostDeadline = 10 * time.Minute
)

// DefaultSettings are Elastic Beanstalk's defaults (AllAtOnce) with the
// fleet's timers.
func DefaultSettings() Settings {
	d := rollout.Defaults()
	return Settings{
		Policy:            d.Policy,
		BatchSizeType:     d.BatchSizeType,
		BatchSize:         d.BatchSize,
		NewVersionPercent: d.NewVersionPercent,
		EvaluationTime:    Duration(d.EvaluationTime),
		StableFor:         Duration(DefaultStableFor),
		LostAfter:         Duration(DefaultLostAfter),
		HostDeadline:      Duration(DefaultHostDeadline),
	}
}

// batching is the part of s that package rollout checks and counts with.
func (s Settings) batching() rollout.Settings {
	return rollout.Settings{
		Policy:            s.Policy,
		BatchSizeType:     s.BatchSizeType,
		BatchSize:         s.BatchSize,
		NewVersionPercent: s.NewVersionPercent,
		EvaluationTime:    time.Duration(s.EvaluationTime),
	}
}

// Validate reports the first setting out of range.
func (s Settings) Validate() error {
	if err := s.batching().Validate(); err != nil {
		return err
	}
	switch {
	case s.StableFor < 0:
		return invalid("stable time %s is negative: use 0 or more, such as 2s", time.Duration(s.StableFor))
	case time.Duration(s.LostAfter) < 2*HeartbeatInFlight:
		return invalid("lost-after %s is too short: hosts report every %s during a rollout, so use at least %s", time.Duration(s.LostAfter), HeartbeatInFlight, 2*HeartbeatInFlight)
	case s.HostDeadline <= s.StableFor:
		return invalid("host deadline %s is too short: use more than the stable time (%s), such as 10m", time.Duration(s.HostDeadline), time.Duration(s.StableFor))
	}
	return nil
}

// batches splits hosts, in order, into the rollout's batches.
func (s Settings) batches(hosts []string) [][]string {
	n := len(hosts)
	switch s.Policy {
	case rollout.Rolling, rollout.RollingWithAdditionalBatch:
		return slices.Collect(slices.Chunk(hosts, s.batching().BatchSizeFor(n)))
	case rollout.TrafficSplitting:
		canary := rollout.Settings{BatchSizeType: rollout.Percentage, BatchSize: s.NewVersionPercent}.BatchSizeFor(n)
		if canary < n {
			return [][]string{hosts[:canary], hosts[canary:]}
		}
	}
	return [][]string{hosts} // AllAtOnce, Immutable, a canary of every host
}

// HostStatus is one host's place in a rollout.
type HostStatus struct {
	State HostState `json:"state"`
	Batch int       `json:"batch"`
	// Since is when the host entered State.
	Since time.Time `json:"since"`
	// Reason says why a host failed or was lost.
	Reason string `json:"reason,omitempty"`
	// Returned and ReturnError say, while rolling back, that the host is
	// back on the last good release, or why it could not get there.
	Returned    bool   `json:"returned,omitempty"`
	ReturnError string `json:"return_error,omitempty"`
}

// Rollout is rollout.json: the environment's one current rollout, kept
// there once terminal until the next one replaces it.
type Rollout struct {
	Format int    `json:"format"`
	ID     string `json:"id"`
	// Epoch is raised by every write, so that a host can ignore an older
	// document and no two writes have the same bytes (and ETag).
	Epoch    int64    `json:"epoch"`
	State    State    `json:"state"`
	Release  Release  `json:"release"`
	Settings Settings `json:"settings"`
	// Batches are the host ids of each batch, frozen at publication.
	Batches [][]string `json:"batches"`
	// Batch is the index of the current batch.
	Batch int                   `json:"batch"`
	Hosts map[string]HostStatus `json:"hosts"`
	// Good holds each app's last good release: one every host of its
	// rollout served healthy. Hosts outside a rollout serve it.
	Good map[string]Release `json:"good,omitempty"`
	// Reason says why the rollout stopped; FailedHost names the host (or
	// the canary's hosts).
	Reason     string `json:"reason,omitempty"`
	FailedHost string `json:"failed_host,omitempty"`
	// Canary is the canary's verdict, with the figures.
	Canary string `json:"canary,omitempty"`
	// RollbackEpoch is the epoch at which rolling back began: only a
	// report that has seen it says a host returned.
	RollbackEpoch int64 `json:"rollback_epoch,omitempty"`
	// By says who published: user@host (sprout version).
	By          string    `json:"by"`
	PublishedAt time.Time `json:"published_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	// StepSince is when the current batch or state began.
	StepSince  time.Time `json:"step_since"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
}

// clone copies what a transition may change.
func (r *Rollout) clone() *Rollout {
	c := *r
	c.Hosts = maps.Clone(r.Hosts)
	c.Good = maps.Clone(r.Good)
	return &c
}

// hostIDs returns the rollout's hosts in batch order.
func (r *Rollout) hostIDs() []string { return slices.Concat(r.Batches...) }

// in returns the hosts in state st, in batch order.
func (r *Rollout) in(st HostState) []string {
	var ids []string
	for _, id := range r.hostIDs() {
		if r.Hosts[id].State == st {
			ids = append(ids, id)
		}
	}
	return ids
}

// Progress says where the rollout stands, in words: its state, its batch,
// and its hosts by where they stand.
func (r *Rollout) Progress() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %s", r.Release.App, r.Release.Label, r.State)
	if r.State == StateRunning || r.State == StateEvaluating {
		fmt.Fprintf(&b, ", batch %d of %d", r.Batch+1, len(r.Batches))
	}
	groups := map[string][]string{}
	for _, id := range r.hostIDs() {
		h := r.Hosts[id]
		where := string(h.State)
		switch {
		case h.Returned:
			where = "returned"
		case h.ReturnError != "":
			where = "could not return"
		}
		groups[where] = append(groups[where], id)
	}
	var parts []string
	for _, where := range []string{"moving", "prepared", "healthy", "failed", "returned", "could not return", "lost"} {
		if ids := groups[where]; len(ids) > 0 {
			parts = append(parts, where+" "+strings.Join(ids, ", "))
		}
	}
	if len(parts) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, "; "))
	}
	if r.Reason != "" {
		b.WriteString(": " + r.Reason)
	}
	return b.String()
}

// BusyError refuses a deploy while another rollout is in flight, naming
// who holds the environment.
type BusyError struct{ Rollout *Rollout }

func (e *BusyError) Error() string {
	r := e.Rollout
	return fmt.Sprintf("rollout %s, published by %s at %s, is in flight (%s): wait for it with --wait, or stop it with sprout abort --app %s",
		r.ID, r.By, r.PublishedAt.UTC().Format(time.RFC3339), r.Progress(), r.Release.App)
}

// Is makes errors.Is(err, ErrBusy) true.
func (e *BusyError) Is(target error) bool { return target == ErrBusy }

// Request asks for a rollout.
type Request struct {
	Release  Release
	Settings Settings
	// By says who asks: user@host (sprout version).
	By string
}

// idLayout writes a rollout's id: its publication epoch as a UTC time.
const idLayout = "20060102T150405.000Z"

// NewRollout is the rollout that req publishes after prev (nil when the
// environment has none): its batches are frozen from the hosts that
// reported within AliveWithin. It refuses while prev is in flight.
func NewRollout(prev *Rollout, req Request, reports map[string]HostReport, now time.Time) (*Rollout, error) {
	if err := req.Release.Validate(); err != nil {
		return nil, err
	}
	if err := req.Settings.Validate(); err != nil {
		return nil, err
	}
	if prev != nil && !prev.State.Terminal() {
		return nil, &BusyError{Rollout: prev}
	}
	var alive []string
	for id, rep := range reports {
		if now.Sub(rep.ReportedAt) <= AliveWithin {
			alive = append(alive, id)
		}
	}
	if len(alive) == 0 {
		// A version nobody served is not known good, and a mistyped
		// --env must not look like a success.
		return nil, fmt.Errorf("%w: no host of this environment has reported in the last %s: start agents with this environment in their config (or SPROUT_ENVIRONMENT), then deploy", ErrNoHosts, AliveWithin)
	}
	slices.Sort(alive)
	epoch := now.UnixMilli()
	if prev != nil {
		epoch = max(epoch, prev.Epoch+1)
	}
	r := &Rollout{
		Format:      FormatVersion,
		ID:          time.UnixMilli(epoch).UTC().Format(idLayout),
		Epoch:       epoch,
		State:       StateRunning,
		Release:     req.Release,
		Settings:    req.Settings,
		Batches:     req.Settings.batches(alive),
		Hosts:       map[string]HostStatus{},
		By:          req.By,
		PublishedAt: now,
		UpdatedAt:   now,
		StepSince:   now,
	}
	if req.Settings.Policy == rollout.Immutable {
		r.State = StatePreparing
	}
	if prev != nil {
		r.Good = maps.Clone(prev.Good)
	}
	for i, batch := range r.Batches {
		for _, id := range batch {
			st := HostPending
			if i == 0 {
				st = HostMoving
			}
			r.Hosts[id] = HostStatus{State: st, Batch: i, Since: now}
		}
	}
	return r, nil
}

// Abort stops the rollout in flight of app (any app when app is empty),
// on behalf of by: every host that moved returns to the last good
// release.
func Abort(r *Rollout, app, by string, now time.Time) (*Rollout, error) {
	switch {
	case r == nil:
		return nil, fmt.Errorf("%w: this environment has had no rollout", ErrNotInFlight)
	case r.State.Terminal():
		return nil, fmt.Errorf("%w: the last rollout, %s, is over (%s)", ErrNotInFlight, r.ID, r.Progress())
	case app != "" && r.Release.App != app:
		return nil, fmt.Errorf("%w: the rollout in flight, %s, is of app %s, not %s: abort with --app %s", ErrNotInFlight, r.ID, r.Release.App, app, r.Release.App)
	case r.State == StateRollingBack:
		return nil, fmt.Errorf("%w: rollout %s is already rolling back (%s)", ErrNotInFlight, r.ID, r.Reason)
	}
	t := newTurn(r, nil, now)
	t.stop("", "aborted by "+by)
	return t.result(r), nil
}
