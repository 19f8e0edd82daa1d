// Package api is the small versioned HTTP/JSON API between the sprout CLI
// and the agent, over the agent's unix socket: the types both sides share,
// the server that exposes an agent, and the client the CLI uses. Long
// operations stream newline-delimited JSON messages as they happen.
package api

import (
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/store"
)

// Version is the API's version prefix.
const Version = "v1"

// Protocol is the API version this build speaks, a small integer raised
// when a change would break the other side; MinProtocol is the oldest one
// it still speaks. The client sends its Protocol in ProtocolHeader on
// every request, and the server answers with its own in the same header:
// each side refuses the other's when it is outside its range, saying
// which side to upgrade. A side that sends none predates the header and
// speaks 1.
//
// Version 2: a deploy, rollback, setenv or scale runs to its end whatever
// happens to its client, and its stream says what the agent accepted
// (Message.Operation), so that a client may stop following it.
const (
	Protocol       = 2
	MinProtocol    = 1
	ProtocolHeader = "Sprout-Api-Version"
	// ProtocolOutlives is the first version whose agents run operations
	// without their client.
	ProtocolOutlives = 2
)

// ByHeader says who runs the CLI (user@host), for the record of the
// operations it starts.
const ByHeader = "Sprout-By"

// Message is one line of a streamed operation. The last line of a stream
// has Done set, and Error when the operation failed.
type Message struct {
	Time time.Time `json:"time"`
	// Step names the step a line belongs to, or the step that begins when
	// Line is empty.
	Step string `json:"step,omitempty"`
	Line string `json:"line,omitempty"`
	// Done marks the last message.
	Done bool `json:"done,omitempty"`
	// Error says why the operation failed.
	Error string `json:"error,omitempty"`
	// Result is the version a successful deploy or rollback serves.
	Result *store.Version `json:"result,omitempty"`
	// Agent is the agent process that serves after a successful upgrade.
	Agent *AgentInfo `json:"agent,omitempty"`
	// Operation, alone in its message, says that the agent accepted the
	// operation and carries it to its end without the client: sent when
	// it queues behind another and when its rollout begins (API version
	// 2 on).
	Operation *agent.Operation `json:"operation,omitempty"`
}

// AppStatus is what `sprout status` and `sprout apps` show of one app.
type AppStatus struct {
	Name          string    `json:"name"`
	Port          int       `json:"port"`
	Serving       string    `json:"serving,omitempty"`
	ServingSince  time.Time `json:"serving_since,omitzero"`
	ContainerID   string    `json:"container_id,omitempty"`
	ContainerPort int       `json:"container_port,omitempty"`
	Container     string    `json:"container_state"`
	// Health is the container-level view: "ok", "down", or the image's
	// HEALTHCHECK state. Status and Causes are the enhanced health that
	// `sprout health` shows.
	Health       string          `json:"health"`
	Status       string          `json:"status"`
	Causes       []string        `json:"causes,omitempty"`
	HostPort     int             `json:"host_port,omitempty"`
	Targets      []string        `json:"targets"`
	Restarts     int             `json:"restarts"`
	StartedAt    time.Time       `json:"started_at,omitzero"`
	HealthConfig health.Settings `json:"health_settings"`
	EnvCount     int             `json:"env_count"`
	// Follows is the manifest the app follows (pull mode), if any.
	Follows *agent.FollowState `json:"follows,omitempty"`
	// Capacity is how many instances the app runs, and Instances each of
	// them; ContainerID above is the first one's.
	Capacity  int                    `json:"capacity"`
	Instances []agent.InstanceStatus `json:"instances"`
	// Policy is the app's deployment policy and batch size, when set.
	Policy string `json:"policy,omitempty"`
	// InFlight lists the app's operations in flight, the running one
	// first, then those queued behind it.
	InFlight []agent.Operation `json:"in_flight,omitempty"`
	// Domains are the host names the app is served by on the shared
	// ports (Port is not used then).
	Domains []string `json:"domains,omitempty"`
}

// DomainList is what `sprout domains` shows.
type DomainList struct {
	// HTTPS says whether the agent serves HTTPS (it has certificates);
	// without, apps with domains are served on HTTP only.
	HTTPS bool `json:"https"`
	// ACME says whether certificates are obtained from an ACME CA for
	// the domains none of yours covers.
	ACME    bool               `json:"acme"`
	Domains []agent.DomainInfo `json:"domains"`
}

// DomainChange adds and removes domains of an app, without a deploy.
type DomainChange struct {
	Add    []string `json:"add,omitempty"`
	Remove []string `json:"remove,omitempty"`
	NoWait bool     `json:"no_wait,omitempty"`
}

// WatchRequest makes an app follow a manifest ("" stops).
type WatchRequest struct {
	Manifest string `json:"manifest"`
	Port     int    `json:"port,omitempty"`
}

// Env is an app's environment as printenv shows it.
type Env struct {
	Env map[string]string `json:"env"`
	// Masked lists the keys whose values were hidden.
	Masked []string `json:"masked,omitempty"`
	// FromBundle lists the keys set by the serving bundle's .ebextensions.
	FromBundle []string `json:"from_bundle,omitempty"`
	// Derived lists the keys Sprout builds (DATABASE_URL from RDS_*).
	Derived []string `json:"derived,omitempty"`
}

// VolumeChange adds or removes (by name) a persistent volume of an app.
type VolumeChange struct {
	Add    *store.Volume `json:"add,omitempty"`
	Remove string        `json:"remove,omitempty"`
	NoWait bool          `json:"no_wait,omitempty"`
}

// EnvChange sets and removes environment properties.
type EnvChange struct {
	Set    map[string]string `json:"set,omitempty"`
	Unset  []string          `json:"unset,omitempty"`
	NoWait bool              `json:"no_wait,omitempty"`
}

// RollbackRequest names the version to serve again ("" for the previous).
type RollbackRequest struct {
	To     string `json:"to,omitempty"`
	NoWait bool   `json:"no_wait,omitempty"`
}

// ScaleRequest changes how many instances an app runs.
type ScaleRequest struct {
	Instances int  `json:"instances"`
	NoWait    bool `json:"no_wait,omitempty"`
}

// AbortResult says what an abort stopped and what serves after it.
type AbortResult struct {
	// Aborted is the operation that was stopped (deploy, rollback, setenv
	// or scale), or "" when none was running.
	Aborted string `json:"aborted"`
	// Cancelled are the operations queued on the app that it cancelled:
	// they never started.
	Cancelled []agent.Operation `json:"cancelled,omitempty"`
	// Serving is the version the app's Instances run.
	Serving   string `json:"serving,omitempty"`
	Instances int    `json:"instances"`
}

// ErrorBody is the body of a failed non-streaming request.
type ErrorBody struct {
	Error string `json:"error"`
	// Incompatible marks the refusal of a client whose API version the
	// agent does not speak.
	Incompatible bool `json:"incompatible,omitempty"`
}

// AgentInfo describes the agent answering on the socket.
type AgentInfo struct {
	ID      string `json:"id"`
	Version string `json:"version"`
	DataDir string `json:"data_dir"`
	// PID is the agent's process; an upgrade starts a new one.
	PID int `json:"pid,omitempty"`
	// StartedAt is when the process started, and UptimeSeconds how long
	// it has run, on the agent's own clock.
	StartedAt     time.Time `json:"started_at,omitzero"`
	UptimeSeconds float64   `json:"uptime_seconds,omitempty"`
}

// DefaultUpgradeTimeout is how long an upgrade waits for the new agent
// process to be ready before it gives up (and the running one keeps
// serving).
const DefaultUpgradeTimeout = time.Minute
