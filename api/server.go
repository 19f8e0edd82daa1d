package api

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/certs"
	"github.com/sprout-paas/sprout/platform"
	"github.com/sprout-paas/sprout/store"
)

// Server exposes an agent over HTTP.
type Server struct {
	agent    *agent.Agent
	log      *slog.Logger
	version  string
	mux      *http.ServeMux
	certs    Certificates // nil until SetCertificates
	started  time.Time
	upgrader Upgrader // nil until SetUpgrader
}

// Upgrader replaces the agent's process with the binary now at its path
// (`sprout agent upgrade`); the agent's command implements it, since it
// owns the process's listeners and state file. It returns the new
// process's info.
type Upgrader interface {
	Upgrade(ctx context.Context, noWait bool, timeout time.Duration, p agent.Progress) (AgentInfo, error)
}

// NewServer returns the API handler for ag, in the agent's process, which
// started about now.
func NewServer(ag *agent.Agent, version string, logger *slog.Logger) *Server {
	s := &Server{agent: ag, log: logger, version: version, mux: http.NewServeMux(), started: time.Now()}
	p := "/" + Version
	s.mux.HandleFunc("GET "+p+"/agent", s.info)
	s.mux.HandleFunc("POST "+p+"/agent/upgrade", s.upgrade)
	s.mux.HandleFunc("GET "+p+"/apps", s.apps)
	s.mux.HandleFunc("GET "+p+"/apps/{app}", s.status)
	s.mux.HandleFunc("GET "+p+"/apps/{app}/versions", s.versions)
	s.mux.HandleFunc("POST "+p+"/apps/{app}/deploy", s.deploy)
	s.mux.HandleFunc("POST "+p+"/apps/{app}/rollback", s.rollback)
	s.mux.HandleFunc("GET "+p+"/apps/{app}/env", s.env)
	s.mux.HandleFunc("POST "+p+"/apps/{app}/env", s.setenv)
	s.mux.HandleFunc("POST "+p+"/apps/{app}/scale", s.scale)
	s.mux.HandleFunc("POST "+p+"/apps/{app}/abort", s.abort)
	s.mux.HandleFunc("GET "+p+"/apps/{app}/logs", s.logs)
	s.mux.HandleFunc("GET "+p+"/apps/{app}/versions/{label}/deploy-log", s.buildLog)
	s.mux.HandleFunc("GET "+p+"/apps/{app}/volumes", s.volumes)
	s.mux.HandleFunc("POST "+p+"/apps/{app}/volumes", s.changeVolumes)
	s.mux.HandleFunc("DELETE "+p+"/apps/{app}", s.removeApp)
	s.mux.HandleFunc("POST "+p+"/apps/{app}/watch", s.watch)
	s.mux.HandleFunc("GET "+p+"/domains", s.domains)
	s.mux.HandleFunc("POST "+p+"/apps/{app}/domains", s.changeDomains)
	s.mux.HandleFunc("GET "+p+"/events", s.events)
	s.mux.HandleFunc("GET "+p+"/operations", s.operations)
	s.mux.HandleFunc("GET "+p+"/health", s.health)
	s.routeCerts(p)
	return s
}

// ServeHTTP answers with the agent's API version, refuses a client whose
// version it does not speak, and routes the request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(ProtocolHeader, strconv.Itoa(Protocol))
	if msg := s.refuseProtocol(r.Header.Get(ProtocolHeader)); msg != "" {
		writeJSON(w, http.StatusBadRequest, ErrorBody{Error: msg, Incompatible: true})
		return
	}
	s.mux.ServeHTTP(w, r)
}

// refuseProtocol says why a client whose ProtocolHeader is h cannot be
// served, naming the side to upgrade, or returns "".
func (s *Server) refuseProtocol(h string) string {
	v, err := parseProtocol(h)
	switch {
	case err != nil:
		return fmt.Sprintf("%s %q: %v", ProtocolHeader, h, err)
	case v > Protocol:
		return fmt.Sprintf("this CLI speaks API version %d, newer than the agent's %d (sprout %s): upgrade the agent on its host to the CLI's version, or use a CLI as old as the agent", v, Protocol, s.version)
	case v < MinProtocol:
		return fmt.Sprintf("this CLI speaks API version %d, older than the agent (sprout %s) still speaks (%d or later): upgrade the CLI to the agent's version", v, s.version, MinProtocol)
	}
	return ""
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// statusOf maps agent errors to HTTP statuses, in one place.
func statusOf(err error) int {
	switch {
	case errors.Is(err, agent.ErrInvalid), errors.Is(err, platform.ErrInvalidEnv), errors.Is(err, certs.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, store.ErrNotFound), errors.Is(err, certs.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, agent.ErrBusy), errors.Is(err, agent.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, agent.ErrUpgrading), errors.Is(err, store.ErrSuspended):
		return http.StatusServiceUnavailable
	case errors.As(err, new(tooLargeError)):
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, err error) {
	status := statusOf(err)
	if status == http.StatusServiceUnavailable {
		// An upgrade hands the agent over: the new process answers
		// in a moment (the CLI asks reads again).
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, ErrorBody{Error: err.Error()})
}

// SetUpgrader makes POST /agent/upgrade work.
func (s *Server) SetUpgrader(u Upgrader) { s.upgrader = u }

func (s *Server) info(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, AgentInfo{ID: s.agent.ID(), Version: s.version, DataDir: s.agent.Config().DataDir,
		PID: os.Getpid(), StartedAt: s.started, UptimeSeconds: time.Since(s.started).Seconds()})
}

// upgrade hands the agent over to the binary at its path, streaming how
// it goes; the last message names the new process.
func (s *Server) upgrade(w http.ResponseWriter, r *http.Request) {
	if s.upgrader == nil {
		writeError(w, fmt.Errorf("%w: this agent cannot upgrade itself", agent.ErrInvalid))
		return
	}
	q := r.URL.Query()
	timeout := DefaultUpgradeTimeout
	if v := q.Get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			writeError(w, fmt.Errorf("%w: timeout=%q is not a duration like 30s or 2m", agent.ErrInvalid, v))
			return
		}
		timeout = d
	}
	st := &stream{w: w}
	info, err := s.upgrader.Upgrade(r.Context(), q.Get("no_wait") == "1", timeout, st)
	if err != nil {
		st.finish(nil, err)
		return
	}
	st.send(Message{Done: true, Agent: &info})
}

func (s *Server) appStatus(ctx context.Context, app *store.App) AppStatus {
	cs := s.agent.ContainerStatus(ctx, app)
	st := AppStatus{
		Name: app.Name, Port: app.Port, Serving: app.Serving, ServingSince: app.ServingAt,
		ContainerID: cs.ID, Container: cs.State, HostPort: cs.HostPort, Restarts: cs.RestartCount,
		StartedAt: cs.StartedAt, Targets: s.agent.Targets(app.Name), HealthConfig: s.agent.HealthSettings(app),
		EnvCount: len(app.Env), Health: "unknown",
		Capacity: app.InstanceCount(), Instances: s.agent.Instances(ctx, app), Domains: app.Domains,
		InFlight: s.agent.InFlightOf(app.Name),
	}
	if r := app.Rollout; r.Policy != "" || r.BatchSize > 0 {
		st.Policy = strings.TrimSpace(fmt.Sprintf("%s %s", r.Policy, batchText(r)))
	}
	if app.Watch != "" {
		st.Follows = s.agent.Following(app.Name)
		if st.Follows == nil {
			st.Follows = &agent.FollowState{Manifest: app.Watch}
		}
	}
	if v, err := s.agent.Versions(app.Name); err == nil {
		for _, x := range v {
			if x.Label == app.Serving {
				st.ContainerPort = x.ContainerPort
			}
		}
	}
	switch {
	case app.Serving == "":
		st.Health = "no version serving"
	case cs.Health != "":
		st.Health = cs.Health
	case cs.State == "running" && len(st.Targets) > 0:
		st.Health = "ok"
	case cs.State != "running":
		st.Health = "down"
	}
	if st.Targets == nil {
		st.Targets = []string{}
	}
	h := s.agent.Health(ctx, app)
	st.Status, st.Causes = h.Status, h.Causes
	return st
}

// batchText says an app's batch size in words.
func batchText(r store.RolloutSettings) string {
	switch {
	case r.BatchSize == 0:
		return ""
	case r.BatchSizeType == "Fixed":
		return fmt.Sprintf("(batches of %d)", r.BatchSize)
	}
	return fmt.Sprintf("(batches of %d%%)", r.BatchSize)
}

func (s *Server) apps(w http.ResponseWriter, r *http.Request) {
	apps, err := s.agent.Apps()
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]AppStatus, 0, len(apps))
	for _, a := range apps {
		out = append(out, s.appStatus(r.Context(), a))
	}
	writeJSON(w, 200, out)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	app, err := s.agent.App(r.PathValue("app"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, s.appStatus(r.Context(), app))
}

func (s *Server) versions(w http.ResponseWriter, r *http.Request) {
	vs, err := s.agent.Versions(r.PathValue("app"))
	if err != nil {
		writeError(w, err)
		return
	}
	if vs == nil {
		vs = []*store.Version{}
	}
	writeJSON(w, 200, vs)
}

func (s *Server) env(w http.ResponseWriter, r *http.Request) {
	env, err := s.agent.Environment(r.PathValue("app"))
	if err != nil {
		writeError(w, err)
		return
	}
	out := Env{Env: map[string]string{}, FromBundle: env.FromBundle, Derived: env.Derived}
	show := r.URL.Query().Get("show_secrets") == "1"
	for k, v := range env.Env {
		if !show && platform.IsSecret(k) {
			v = platform.Mask(v)
			out.Masked = append(out.Masked, k)
		}
		out.Env[k] = v
	}
	slices.Sort(out.Masked)
	writeJSON(w, 200, out)
}

// flushWriter sends every write to the client at once (followed logs).
type flushWriter struct {
	w       http.ResponseWriter
	started bool
}

func (f *flushWriter) Write(b []byte) (int, error) {
	if !f.started {
		f.w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		f.started = true
	}
	n, err := f.w.Write(b)
	http.NewResponseController(f.w).Flush()
	return n, err
}

func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	req := agent.LogRequest{App: r.PathValue("app"), Label: q.Get("label"), Follow: q.Get("follow") == "1"}
	if v := q.Get("since"); v != "" {
		since, err := parseSince(v)
		if err != nil {
			writeError(w, err)
			return
		}
		req.Since = since
	}
	if v := q.Get("tail"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, fmt.Errorf("%w: tail=%q is not a number of lines", agent.ErrInvalid, v))
			return
		}
		req.Tail = n
	}
	fw := &flushWriter{w: w}
	if q.Get("files") == "1" {
		if err := s.agent.LogFiles(req.App, req.Label, req.Tail, fw); err != nil && !fw.started {
			writeError(w, err)
		}
		return
	}
	if err := s.agent.Logs(r.Context(), req, fw); err != nil {
		if !fw.started {
			writeError(w, err)
			return
		}
		fmt.Fprintf(fw, "\nsprout: %v\n", err)
	}
}

func (s *Server) buildLog(w http.ResponseWriter, r *http.Request) {
	fw := &flushWriter{w: w}
	if err := s.agent.BuildLog(r.PathValue("app"), r.PathValue("label"), fw); err != nil && !fw.started {
		writeError(w, err)
	}
}

// parseSince reads a duration ago (10m) or a time (RFC 3339).
func parseSince(v string) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		return time.Now().Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%w: since=%q is neither a duration like 10m nor a time like 2026-01-02T15:04:05Z", agent.ErrInvalid, v)
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	var apps []*store.App
	if name := r.URL.Query().Get("app"); name != "" {
		app, err := s.agent.App(name)
		if err != nil {
			writeError(w, err)
			return
		}
		apps = []*store.App{app}
	} else {
		var err error
		if apps, err = s.agent.Apps(); err != nil {
			writeError(w, err)
			return
		}
	}
	out := make([]agent.Report, 0, len(apps))
	for _, app := range apps {
		out = append(out, s.agent.Health(r.Context(), app))
	}
	writeJSON(w, 200, out)
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	if limit <= 0 || limit > store.MaxEvents {
		limit = 100
	}
	evs, err := s.agent.Events(r.URL.Query().Get("app"), limit)
	if err != nil {
		writeError(w, err)
		return
	}
	if evs == nil {
		evs = []store.Event{}
	}
	writeJSON(w, 200, evs)
}

// stream sends Messages as NDJSON. The header goes out with the first
// message, so an error before any progress still gets a real status.
type stream struct {
	w       http.ResponseWriter
	mu      sync.Mutex
	started bool
	step    string
}

func (st *stream) send(m Message) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.started {
		st.w.Header().Set("Content-Type", "application/x-ndjson")
		st.w.WriteHeader(http.StatusOK)
		st.started = true
	}
	if m.Time.IsZero() {
		m.Time = time.Now()
	}
	b, _ := json.Marshal(m)
	st.w.Write(append(b, '\n'))
	http.NewResponseController(st.w).Flush()
}

// Step implements agent.Progress.
func (st *stream) Step(name string) {
	st.step = name
	st.send(Message{Step: name})
}

// Line implements agent.Progress.
func (st *stream) Line(text string) { st.send(Message{Step: st.step, Line: text}) }

func (st *stream) finish(v *store.Version, err error) {
	if err != nil && !st.started {
		writeError(st.w, err)
		return
	}
	st.send(doneMessage(v, err))
}

// doneMessage is the last message of an operation that returned v, err.
func doneMessage(v *store.Version, err error) Message {
	m := Message{Done: true}
	if err != nil {
		m.Error = err.Error()
		var se *agent.StepError
		switch {
		case errors.As(err, &se) && errors.Is(err, agent.ErrAborted):
			// An abort is not the failure of the step it stopped.
			m.Error = fmt.Sprintf("%v at the %s step", se.Err, se.Step)
		case errors.As(err, &se):
			m.Step, m.Error = se.Step, se.Err.Error()
		}
	} else {
		m.Result = v
	}
	return m
}

func (s *Server) deploy(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	settings, err := agent.ParseSettings(q)
	if err != nil {
		writeError(w, err)
		return
	}
	// from= names a bundle the agent fetches itself; otherwise the body
	// is the bundle.
	from, path := q.Get("from"), ""
	if from == "" {
		path, err = s.receive(w, r)
		if err != nil {
			os.Remove(path)
			s.log.Warn("deploy refused: its bundle did not arrive whole", "app", r.PathValue("app"), "error", err)
			writeError(w, err)
			return
		}
	}
	req := agent.DeployRequest{
		App: r.PathValue("app"), Label: q.Get("label"), BundlePath: path, From: from,
		Source: cmp.Or(q.Get("source"), "upload"), Commit: q.Get("commit"), Settings: settings, NoWait: q.Get("no_wait") == "1",
	}
	s.run(w, r, "deploy", func(ctx context.Context, p agent.Progress) (*store.Version, error) {
		return s.agent.Deploy(ctx, req, p)
	})
}

// receive stores the request body, a bundle archive, in the data dir.
func (s *Server) receive(w http.ResponseWriter, r *http.Request) (string, error) {
	f, err := s.agent.NewUpload()
	if err != nil {
		return "", err
	}
	defer f.Close()
	max := s.agent.MaxUploadBytes()
	n, err := io.Copy(f, http.MaxBytesReader(w, r.Body, max))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return f.Name(), tooLargeError(max)
	}
	if err != nil {
		// A client that goes away during the upload: no deploy starts
		// from part of a bundle.
		return f.Name(), fmt.Errorf("%w: the upload of the bundle broke off after %d bytes (%v); nothing was deployed: deploy it again", agent.ErrInvalid, n, err)
	}
	return f.Name(), f.Close()
}

// tooLargeError is a bundle over bundle.max_upload_bytes (the value).
type tooLargeError int64

func (e tooLargeError) Error() string {
	return fmt.Sprintf("the bundle is larger than %d bytes (limit bundle.max_upload_bytes)", int64(e))
}

func (s *Server) rollback(w http.ResponseWriter, r *http.Request) {
	var req RollbackRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		writeError(w, fmt.Errorf("%w: %v", agent.ErrInvalid, err))
		return
	}
	s.run(w, r, "rollback", func(ctx context.Context, p agent.Progress) (*store.Version, error) {
		return s.agent.Rollback(ctx, r.PathValue("app"), req.To, req.NoWait, p)
	})
}

func (s *Server) setenv(w http.ResponseWriter, r *http.Request) {
	var req EnvChange
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, fmt.Errorf("%w: %v", agent.ErrInvalid, err))
		return
	}
	s.run(w, r, "setenv", func(ctx context.Context, p agent.Progress) (*store.Version, error) {
		return nil, s.agent.SetEnv(ctx, r.PathValue("app"), req.Set, req.Unset, req.NoWait, p)
	})
}

func (s *Server) scale(w http.ResponseWriter, r *http.Request) {
	var req ScaleRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, fmt.Errorf("%w: %v", agent.ErrInvalid, err))
		return
	}
	s.run(w, r, "scale", func(ctx context.Context, p agent.Progress) (*store.Version, error) {
		return nil, s.agent.Scale(ctx, r.PathValue("app"), req.Instances, req.NoWait, p)
	})
}

// abort stops the app's rollout in flight, cancels those queued, and
// answers once every instance is back on the version that was serving.
func (s *Server) abort(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("app")
	res, err := s.agent.Abort(agent.WithStartedBy(r.Context(), r.Header.Get(ByHeader)), name)
	if err != nil {
		writeError(w, err)
		return
	}
	app, err := s.agent.App(name)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, AbortResult{Aborted: res.Running, Cancelled: res.Cancelled, Serving: app.Serving, Instances: len(app.Instances)})
}

func (s *Server) volumes(w http.ResponseWriter, r *http.Request) {
	vs, err := s.agent.Volumes(r.Context(), r.PathValue("app"))
	if err != nil {
		writeError(w, err)
		return
	}
	if vs == nil {
		vs = []agent.VolumeInfo{}
	}
	writeJSON(w, 200, vs)
}

func (s *Server) changeVolumes(w http.ResponseWriter, r *http.Request) {
	var req VolumeChange
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, fmt.Errorf("%w: %v", agent.ErrInvalid, err))
		return
	}
	// A volume change is a configuration rollout: it too outlives its
	// client.
	s.run(w, r, "volume change", func(ctx context.Context, p agent.Progress) (*store.Version, error) {
		switch {
		case req.Add != nil:
			return nil, s.agent.AddVolume(ctx, r.PathValue("app"), *req.Add, req.NoWait, p)
		case req.Remove != "":
			return nil, s.agent.RemoveVolume(ctx, r.PathValue("app"), req.Remove, req.NoWait, p)
		}
		return nil, fmt.Errorf("%w: name a volume to add or remove", agent.ErrInvalid)
	})
}

func (s *Server) removeApp(w http.ResponseWriter, r *http.Request) {
	st := &stream{w: w}
	st.finish(nil, s.agent.RemoveApp(r.Context(), r.PathValue("app"), r.URL.Query().Get("purge") == "1", st))
}

func (s *Server) watch(w http.ResponseWriter, r *http.Request) {
	var req WatchRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, fmt.Errorf("%w: %v", agent.ErrInvalid, err))
		return
	}
	if err := s.agent.SetWatch(r.Context(), r.PathValue("app"), req.Manifest, req.Port); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, map[string]string{"manifest": req.Manifest})
}

// domains lists the domains of one app (?app=) or of every app.
func (s *Server) domains(w http.ResponseWriter, r *http.Request) {
	ds, err := s.agent.Domains(r.URL.Query().Get("app"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, DomainList{HTTPS: s.agent.HasCertificates(), ACME: s.agent.ObtainsCertificates(), Domains: ds})
}

// changeDomains adds and removes domains of an app without a deploy.
func (s *Server) changeDomains(w http.ResponseWriter, r *http.Request) {
	var req DomainChange
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, fmt.Errorf("%w: %v", agent.ErrInvalid, err))
		return
	}
	st := &stream{w: w}
	_, err := s.agent.ChangeDomains(r.Context(), r.PathValue("app"), req.Add, req.Remove, req.NoWait, st)
	st.finish(nil, err)
}
