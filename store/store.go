// Package store keeps the agent's state (apps, their versions and
// environment, and a bounded event history) in a bbolt file in the data
// dir, so that it survives restarts.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/platform"
)

// ErrNotFound means the app or version does not exist.
var ErrNotFound = errors.New("not found")

// MaxEvents is how many events the store keeps; older ones are dropped.
const MaxEvents = 10000

var (
	bucketMeta     = []byte("meta")
	bucketApps     = []byte("apps")
	bucketVersions = []byte("versions")
	bucketEvents   = []byte("events")
	bucketJournals = []byte("journals")
)

// App is one application on this host and its settings.
type App struct {
	Name string `json:"name"`
	// Port is the public port the proxy listens on.
	Port int `json:"port"`
	// ContainerPort overrides what the bundle says, when set.
	ContainerPort int               `json:"container_port,omitempty"`
	Health        health.Settings   `json:"health"`
	Env           map[string]string `json:"env,omitempty"`
	// Serving is the label of the version taking traffic, "" before the
	// first successful deploy.
	Serving string `json:"serving,omitempty"`
	// ContainerID is the first instance's container, as before apps had
	// several.
	ContainerID string `json:"container_id,omitempty"`
	// Instances are the containers serving the app, one per instance.
	Instances []Instance `json:"instances,omitempty"`
	// Capacity is how many instances the app runs; 0 means 1.
	Capacity int `json:"capacity,omitempty"`
	// Rollout holds the app's own deployment policy settings (flags and
	// `sprout deploy` options), which win over the bundle's.
	Rollout   RolloutSettings `json:"rollout,omitzero"`
	ServingAt time.Time       `json:"serving_at,omitzero"`
	CreatedAt time.Time       `json:"created_at"`
	// Volumes are named persistent volumes declared with `sprout volumes
	// add`; they survive every deploy, rollback and agent restart.
	Volumes []Volume `json:"volumes,omitempty"`
	// Watch is the manifest (s3://bucket/key) the app follows, if any.
	Watch string `json:"watch,omitempty"`
	// Domains are the host names the app is served by on the agent's
	// shared HTTP and HTTPS ports, instead of Port; kept across deploys.
	Domains []string `json:"domains,omitempty"`
	// HTTPS says how the shared ports serve the app.
	HTTPS HTTPSSettings `json:"https,omitzero"`
}

// HTTPSSettings say how the shared ports serve an app with domains.
type HTTPSSettings struct {
	// NoRedirect keeps plain HTTP requests on HTTP; by default they are
	// redirected (308) to HTTPS once a certificate covers their host.
	NoRedirect bool `json:"no_redirect,omitempty"`
	// HSTSMaxAge, when positive, is the max-age (seconds) of the
	// Strict-Transport-Security header of HTTPS responses.
	HSTSMaxAge int `json:"hsts_max_age,omitempty"`
}

// OwnPort is the port the proxy serves the app on as its own: Port, or 0
// when the app has domains (it is served on the shared ports then).
func (a *App) OwnPort() int {
	if len(a.Domains) > 0 {
		return 0
	}
	return a.Port
}

// Instance is one container serving an app.
type Instance struct {
	ContainerID string    `json:"container_id"`
	Name        string    `json:"name"`
	Label       string    `json:"label"`
	StartedAt   time.Time `json:"started_at"`
}

// InstanceCount is how many instances the app runs.
func (a *App) InstanceCount() int { return max(a.Capacity, 1) }

// InstanceList lists the app's instances: its own, or the one container
// of an app recorded before apps had instances.
func (a *App) InstanceList() []Instance {
	if len(a.Instances) == 0 && a.ContainerID != "" {
		return []Instance{{ContainerID: a.ContainerID, Label: a.Serving, StartedAt: a.ServingAt}}
	}
	return a.Instances
}

// ServingIDs lists the containers serving the app.
func (a *App) ServingIDs() []string {
	ins := a.InstanceList()
	out := make([]string, len(ins))
	for i, in := range ins {
		out[i] = in.ContainerID
	}
	return out
}

// RolloutSettings are an app's deployment policy settings; zero values
// leave the choice to the bundle's .ebextensions, then the defaults.
type RolloutSettings struct {
	Policy            string        `json:"policy,omitempty"`
	BatchSizeType     string        `json:"batch_size_type,omitempty"`
	BatchSize         int           `json:"batch_size,omitempty"`
	NewVersionPercent int           `json:"new_version_percent,omitempty"`
	EvaluationTime    time.Duration `json:"evaluation_time,omitempty"`
}

// Volume is a named persistent volume mounted at Path in the app's
// containers.
type Volume struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

// Version states.
const (
	StatusPending = "pending"
	StatusServing = "serving"
	StatusRetired = "retired"
	StatusFailed  = "failed"
)

// Version is one deployable version of an app.
type Version struct {
	App   string `json:"app"`
	Label string `json:"label"`
	Seq   uint64 `json:"seq"`
	// Status is one of the Status constants.
	Status string `json:"status"`
	// Source describes where the bundle came from: a file name, an S3
	// URL or a git URL#ref (never with credentials).
	Source string `json:"source,omitempty"`
	// Commit is the git commit deployed; ETag the S3 object's; SHA256
	// the fetched bundle's digest.
	Commit string `json:"commit,omitempty"`
	ETag   string `json:"etag,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	// Kind is "dockerfile" or "image".
	Kind string `json:"kind,omitempty"`
	// Image is the tag Sprout gave the version's image.
	Image          string `json:"image,omitempty"`
	ImageID        string `json:"image_id,omitempty"`
	ContainerPort  int    `json:"container_port,omitempty"`
	HasHealthcheck bool   `json:"has_healthcheck,omitempty"`
	// ImagePruned is set once the image was removed to save space.
	ImagePruned bool `json:"image_pruned,omitempty"`
	// FailedStep and Error say why a failed version failed.
	FailedStep string    `json:"failed_step,omitempty"`
	Error      string    `json:"error,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	// DeployedAt is when the version last started serving.
	DeployedAt time.Time `json:"deployed_at,omitzero"`
	// Steps holds how long each deploy step took, in milliseconds.
	Steps map[string]int64 `json:"steps,omitempty"`
	// Run says how the version's container starts (Dockerrun.aws.json).
	Run platform.Run `json:"run,omitzero"`
	// Options are the bundle's .ebextensions settings.
	Options platform.Options `json:"options,omitzero"`
	// Hooks are the bundle's .platform hooks, kept in BundleDir.
	Hooks     platform.Hooks `json:"hooks,omitempty"`
	BundleDir string         `json:"bundle_dir,omitempty"`
	// ImageVolumes are the paths the image declares with VOLUME; each
	// gets a persistent volume of the app.
	ImageVolumes []string `json:"image_volumes,omitempty"`
}

// Undo kinds: what a journal entry does to undo its step.
const (
	// UndoRemove removes a container the rollout started.
	UndoRemove = "remove"
	// UndoRoute routes the app back to Addrs (and drains what it left).
	UndoRoute = "route"
	// UndoRestart starts a container the rollout stopped again, and
	// routes it when Routed (ProxyServer none stops the serving container
	// before the new one takes its port).
	UndoRestart = "restart"
	// UndoClose closes a public port the rollout opened.
	UndoClose = "close"
	// UndoListen opens a public port the rollout closed again.
	UndoListen = "listen"
	// UndoDomains serves the app by Domains again (none: by no domain),
	// as it was before the rollout.
	UndoDomains = "domains"
)

// Undo is one journal entry: how to undo one step of a rollout.
type Undo struct {
	Kind      string   `json:"kind"`
	Container string   `json:"container,omitempty"`
	Addrs     []string `json:"addrs,omitempty"`
	// Containers, on UndoRoute, are the containers to route to again;
	// their addresses are looked up when the entry is replayed.
	Containers []string `json:"containers,omitempty"`
	Port       int      `json:"port,omitempty"`
	Routed     bool     `json:"routed,omitempty"`
	// Domains and HTTPS, on UndoDomains, are the app's domains before.
	Domains []string      `json:"domains,omitempty"`
	HTTPS   HTTPSSettings `json:"https,omitzero"`
	// Label is the version the step concerned, for messages.
	Label string `json:"label,omitempty"`
}

// Journal records how to undo an app's rollout while it runs: each entry
// is written before its step runs, and the journal is deleted once the
// rollout is committed. A failure, an abort and an agent restarted after
// a crash all undo the rollout by replaying its entries, newest first.
type Journal struct {
	App     string    `json:"app"`
	Op      string    `json:"op"`
	Label   string    `json:"label"`
	Started time.Time `json:"started"`
	Entries []Undo    `json:"entries,omitempty"`
}

// PutJournal writes an app's rollout journal.
func (s *Store) PutJournal(j *Journal) error {
	return s.update(func(tx *bolt.Tx) error { return put(tx.Bucket(bucketJournals), j.App, j) })
}

// DeleteJournal removes an app's rollout journal.
func (s *Store) DeleteJournal(app string) error {
	return s.update(func(tx *bolt.Tx) error { return tx.Bucket(bucketJournals).Delete([]byte(app)) })
}

// Journals returns the journals of rollouts that never finished.
func (s *Store) Journals() ([]*Journal, error) {
	var out []*Journal
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJournals)
		return b.ForEach(func(k, _ []byte) error {
			j, err := get[Journal](b, string(k))
			if err != nil {
				return err
			}
			out = append(out, j)
			return nil
		})
	})
	return out, err
}

// Event is one line of an app's history.
type Event struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	App     string    `json:"app"`
	Label   string    `json:"label,omitempty"`
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
}

// Store is the agent's state file.
type Store struct {
	path      string
	maxEvents uint64

	// mu guards db against Suspend and Resume, which replace it; reads
	// and writes hold it shared.
	mu sync.RWMutex
	db *bolt.DB
	// shut is why db is closed (ErrSuspended or errClosed), nil while
	// it is open.
	shut error
}

var errClosed = errors.New("the state file is closed")

// ErrSuspended means the state file is handed to a new agent process
// during an upgrade (Suspend): this one reads and writes it no more.
var ErrSuspended = errors.New("the agent is handing its state to a new agent process (an upgrade); ask again in a moment")

// Open opens or creates the state file at path.
func Open(path string) (*Store, error) {
	db, err := openDB(path)
	if err != nil {
		return nil, err
	}
	return &Store{path: path, db: db, maxEvents: MaxEvents}, nil
}

// openDB opens the bbolt file, which locks it for this process alone.
func openDB(path string) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("state file %s is locked: another sprout agent uses this data dir", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketApps, bucketVersions, bucketEvents, bucketJournals} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// view runs fn in a read transaction.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.shut != nil {
		return s.shut
	}
	return s.db.View(fn)
}

// update runs fn in a write transaction.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.shut != nil {
		return s.shut
	}
	return s.db.Update(fn)
}

// Close closes the file.
func (s *Store) Close() error { return s.shutWith(errClosed) }

// Suspend closes the file, releasing its lock, so that another process
// (the agent's successor in an upgrade) may open it. Until Resume, reads
// and writes fail with ErrSuspended.
func (s *Store) Suspend() error { return s.shutWith(ErrSuspended) }

func (s *Store) shutWith(why error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shut != nil {
		s.shut = why
		return nil
	}
	s.shut = why
	return s.db.Close()
}

// Resume opens the file again after Suspend, when the successor did not
// take over.
func (s *Store) Resume() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shut != ErrSuspended {
		return nil
	}
	db, err := openDB(s.path)
	if err != nil {
		return err
	}
	s.db, s.shut = db, nil
	return nil
}

// Size is the state file's size in bytes.
func (s *Store) Size() int64 {
	st, err := os.Stat(s.path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// Meta returns a value of the agent's own metadata, creating it with
// init when it is missing.
func (s *Store) Meta(key string, init func() string) (string, error) {
	var v string
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if cur := b.Get([]byte(key)); cur != nil {
			v = string(cur)
			return nil
		}
		v = init()
		return b.Put([]byte(key), []byte(v))
	})
	return v, err
}

func get[T any](b *bolt.Bucket, key string) (*T, error) {
	raw := b.Get([]byte(key))
	if raw == nil {
		return nil, ErrNotFound
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("corrupt record %q: %w", key, err)
	}
	return &v, nil
}

func put(b *bolt.Bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), raw)
}

// App returns one app.
func (s *Store) App(name string) (*App, error) {
	var a *App
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		a, err = get[App](tx.Bucket(bucketApps), name)
		return err
	})
	return a, err
}

// PutApp creates or replaces an app.
func (s *Store) PutApp(a *App) error {
	return s.update(func(tx *bolt.Tx) error { return put(tx.Bucket(bucketApps), a.Name, a) })
}

// Apps returns every app, by name.
func (s *Store) Apps() ([]*App, error) {
	var out []*App
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketApps).ForEach(func(k, _ []byte) error {
			a, err := get[App](tx.Bucket(bucketApps), string(k))
			if err == nil {
				out = append(out, a)
			}
			return err
		})
	})
	return out, err
}

// DeleteApp removes an app and its versions; its events stay.
func (s *Store) DeleteApp(name string) error {
	return s.update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketApps).Delete([]byte(name)); err != nil {
			return err
		}
		err := tx.Bucket(bucketVersions).DeleteBucket([]byte(name))
		if errors.Is(err, bolterrors.ErrBucketNotFound) {
			return nil
		}
		return err
	})
}

// PutVersion creates or replaces a version; a new one gets the next
// sequence number of its app.
func (s *Store) PutVersion(v *Version) error {
	return s.update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketVersions).CreateBucketIfNotExists([]byte(v.App))
		if err != nil {
			return err
		}
		if v.Seq == 0 {
			if v.Seq, err = b.NextSequence(); err != nil {
				return err
			}
		}
		return put(b, v.Label, v)
	})
}

// Version returns one version of an app.
func (s *Store) Version(app, label string) (*Version, error) {
	var v *Version
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVersions).Bucket([]byte(app))
		if b == nil {
			return ErrNotFound
		}
		var err error
		v, err = get[Version](b, label)
		return err
	})
	return v, err
}

// NextSeq is the sequence number the app's next version will get.
func (s *Store) NextSeq(app string) uint64 {
	var n uint64
	s.view(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketVersions).Bucket([]byte(app)); b != nil {
			n = b.Sequence()
		}
		return nil
	})
	return n + 1
}

// Versions returns an app's versions, newest first.
func (s *Store) Versions(app string) ([]*Version, error) {
	var out []*Version
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVersions).Bucket([]byte(app))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, _ []byte) error {
			v, err := get[Version](b, string(k))
			if err == nil {
				out = append(out, v)
			}
			return err
		})
	})
	slices.SortFunc(out, func(a, b *Version) int { return int(b.Seq) - int(a.Seq) })
	return out, err
}

// AddEvent appends an event, dropping the oldest beyond MaxEvents.
func (s *Store) AddEvent(e Event) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		e.Seq = seq
		raw, err := json.Marshal(e)
		if err != nil {
			return err
		}
		if err := b.Put(seqKey(seq), raw); err != nil {
			return err
		}
		if seq > s.maxEvents {
			c := b.Cursor()
			for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= seq-s.maxEvents; k, _ = c.First() {
				if err := c.Delete(); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// Events returns up to limit of the newest events, of one app when app is
// not empty, oldest first.
func (s *Store) Events(app string, limit int) ([]Event, error) {
	var out []Event
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		for k, raw := c.Last(); k != nil && len(out) < limit; k, raw = c.Prev() {
			var e Event
			if err := json.Unmarshal(raw, &e); err != nil {
				continue
			}
			if app == "" || e.App == app {
				out = append(out, e)
			}
		}
		return nil
	})
	slices.Reverse(out)
	return out, err
}

func seqKey(n uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, n)
	return k
}
