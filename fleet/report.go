package fleet

import (
	"time"

	"github.com/sprout-paas/sprout/health"
)

// Phase is what a host is doing with one app.
type Phase string

// The phases a host reports.
const (
	// PhaseIdle: the host serves nothing of the app.
	PhaseIdle Phase = "idle"
	// PhaseDeploying: working towards Target (a deploy, a prepare or a
	// switch).
	PhaseDeploying Phase = "deploying"
	// PhasePrepared: Target runs healthy beside Serving, out of the
	// rotation (Immutable).
	PhasePrepared Phase = "prepared"
	// PhaseHealthy: Serving passes its checks, since HealthySince.
	PhaseHealthy Phase = "healthy"
	// PhaseUnhealthy: Serving fails its checks.
	PhaseUnhealthy Phase = "unhealthy"
	// PhaseFailed: the last attempt at Target failed and was undone;
	// Serving still serves.
	PhaseFailed Phase = "failed"
	// PhaseRollingBack: returning to Target, the last good version.
	PhaseRollingBack Phase = "rolling-back"
)

// busy tells whether the host is working towards a target.
func (p Phase) busy() bool { return p == PhaseDeploying || p == PhaseRollingBack }

// HostReport is hosts/<host-id>.json, written only by its host. A host
// writes it when any of it changes, when it has read a rollout epoch it
// has not reported yet, and at least every Heartbeat.
type HostReport struct {
	Format int    `json:"format"`
	Host   string `json:"host"`
	// Agent is the agent's version; Address the host's public address.
	Agent      string    `json:"agent,omitempty"`
	Address    string    `json:"address,omitempty"`
	ReportedAt time.Time `json:"reported_at"`
	// Epoch and Rollout are the newest rollout document the host has read.
	// The host ignores any older document it reads afterwards.
	Epoch   int64                `json:"epoch"`
	Rollout string               `json:"rollout,omitempty"`
	Apps    map[string]AppReport `json:"apps,omitempty"`
}

// AppReport is what a host says of one app.
type AppReport struct {
	// Serving is the label in the rotation; Target the label the host
	// works towards, or last worked towards when Phase is failed.
	Serving string `json:"serving,omitempty"`
	Target  string `json:"target,omitempty"`
	Phase   Phase  `json:"phase"`
	// Rollout is the id of the rollout under which the host took up
	// Target, so that a failure in an older rollout never fails a newer
	// one; empty for work outside any rollout.
	Rollout string `json:"rollout,omitempty"`
	// HealthySince is when Serving last turned healthy on this host.
	HealthySince time.Time `json:"healthy_since,omitzero"`
	Error        string    `json:"error,omitempty"`
	// Traffic is the serving label's requests over TrafficSpan, for
	// judging a canary.
	Traffic *Traffic `json:"traffic,omitempty"`
}

// Traffic is one label's request figures on one host.
type Traffic struct {
	Label string       `json:"label"`
	Stats health.Stats `json:"stats"`
}
