package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	goruntime "runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/certs"
	"github.com/sprout-paas/sprout/gitpush"
	"github.com/sprout-paas/sprout/handover"
	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/internal/httpdrain"
	"github.com/sprout-paas/sprout/metrics"
	"github.com/sprout-paas/sprout/proxy"
	"github.com/sprout-paas/sprout/runtime"
	"github.com/sprout-paas/sprout/source"
	"github.com/sprout-paas/sprout/store"
)

func newAgentCommand(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the host daemon in the foreground",
		Long: `Run the agent: it owns this host's apps, their proxy ports and the API socket.

Configuration comes from the config file, SPROUT_* environment variables and
flags, in that order of precedence (see configs/agent.yaml).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("host") {
				return errors.New("`sprout agent` runs the agent on this host; --host is for the commands that talk to one (ssh to the host to start its agent)")
			}
			cfg, err := LoadAgentConfig(cmd.Flags())
			if err != nil {
				return err
			}
			return runAgent(cmd.Context(), c, cfg)
		},
	}
	cmd.Flags().String("data-dir", "", "where the agent keeps all its state (env SPROUT_DATA_DIR; default /var/lib/sprout)")
	cmd.Flags().String("log-level", "", "debug, info, warn or error (env SPROUT_LOG_LEVEL)")
	cmd.Flags().String("pid-file", "", "write the agent's process id there, again after each upgrade (env SPROUT_PID_FILE; systemd's PIDFile=)")
	cmd.AddCommand(newAgentUpgradeCommand(c))
	return cmd
}

func runAgent(ctx context.Context, c *cli, cfg *AgentConfig) (err error) {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	logOut := newBufferedLog(c.err, 100*time.Millisecond)
	defer logOut.Close()
	var h slog.Handler = slog.NewJSONHandler(logOut, opts)
	if cfg.LogFormat == "text" {
		h = slog.NewTextHandler(logOut, opts)
	}
	log := slog.New(h)
	signals, stopNotify := notifySignals()
	defer stopNotify()
	if cfg.CPUs > 0 && cfg.CPUs != goruntime.GOMAXPROCS(0) {
		// Setting it stops the runtime's following a cgroup's changing
		// CPU limit: only when it differs.
		goruntime.GOMAXPROCS(cfg.CPUs)
	}

	// Started by an upgrade, the agent takes over its predecessor's
	// listeners, and tells it why when it cannot (the predecessor then
	// keeps serving).
	hs, err := handover.Inherit()
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			hs.Fail(err)
		}
	}()
	if err := os.MkdirAll(cfg.Agent.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	st, err := store.Open(filepath.Join(cfg.Agent.DataDir, "state.db"))
	if err != nil {
		return err
	}
	defer st.Close()
	docker, err := runtime.New(ctx)
	if err != nil {
		return err
	}
	defer docker.Close()
	docker.PullTimeout = cfg.PullTimeout
	m := metrics.New(func() float64 { return float64(st.Size()) })
	tracker := health.NewTracker()
	m.Registry().MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "sprout_log_lines_dropped_total", Help: "Log lines (mostly access-log lines) dropped because the log output did not keep up.",
	}, func() float64 { return float64(logOut.Dropped()) }))
	cfg.Proxy.Observer = proxy.Observers(m, tracker)
	cfg.Proxy.Listen = hs.Listen
	if cfg.LogFormat != "text" {
		cfg.Proxy.AccessLogOutput = logOut // the JSON line, built by the proxy
	}
	// TLS certificates, yours and ACME's: the shared HTTPS port serves
	// them, the shared HTTP port answers the CA's HTTP-01 challenges, and
	// the agent tells the manager which domains its apps have.
	cm, err := certs.New(cfg.TLS, log.With("component", "certs"))
	if err != nil {
		return fmt.Errorf("config tls: %w", err)
	}
	defer cm.Close()
	cfg.Proxy.Certificates = cm
	px := proxy.New(cfg.Proxy, log.With("component", "proxy"))
	ag, err := agent.New(cfg.Agent, docker, px, st, m, tracker, log.With("component", "agent"))
	if err != nil {
		return err
	}
	ag.SetCertManager(cm)
	ag.SetFetcher(&source.Fetcher{S3Options: cfg.S3, WorkDir: filepath.Join(cfg.Agent.DataDir, "bundles")})
	// servers are the agent's own HTTP servers besides the API's.
	var servers []*httpdrain.Server
	if cfg.MetricsAddress != "" {
		mln, err := hs.Listen("tcp", cfg.MetricsAddress)
		if err != nil {
			return fmt.Errorf("config metrics.address: cannot listen on %s: %w", cfg.MetricsAddress, err)
		}
		msrv := httpdrain.New(&http.Server{Handler: metricsMux(m), ReadHeaderTimeout: 10 * time.Second})
		go msrv.Serve(mln)
		defer msrv.Close()
		servers = append(servers, msrv)
		log.Info("metrics served", "addr", "http://"+mln.Addr().String()+"/metrics")
	}
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	if cfg.Git.Address != "" {
		gsrv, err := serveGit(cfg, hs.Listen, log.With("component", "git"))
		if err != nil {
			return err
		}
		defer gsrv.Close()
		servers = append(servers, gsrv)
	}
	ln, err := listenSocket(hs, cfg.Socket, cfg.SocketGroup)
	if err != nil {
		return err
	}
	if err := ag.Start(ctx); err != nil {
		ln.Close()
		return err
	}
	for _, d := range cfg.Apps {
		if err := ag.SetWatch(ctx, d.Name, d.Manifest, d.Port); err != nil {
			ln.Close()
			return fmt.Errorf("config apps: %s: %w", d.Name, err)
		}
	}
	loops := &background{parent: ctx, loops: []func(context.Context){
		ag.Watch, ag.Monitor, func(ctx context.Context) { ag.Follow(ctx, cfg.WatchInterval) },
	}}
	if cfg.Environment != "" {
		env, host, err := joinEnvironment(ctx, cfg)
		if err != nil {
			ln.Close()
			return err
		}
		log.Info("environment joined", "env", env.URL(), "host_id", host.ID)
		loops.loops = append(loops.loops, func(ctx context.Context) { ag.RunEnvironment(ctx, env, host) })
	}
	loops.start()
	up := &upgrader{ag: ag, st: st, hs: hs, loops: loops, log: log.With("component", "upgrade"), handedOver: make(chan struct{}), stopping: make(chan struct{})}
	apiServer := api.NewServer(ag, Version, log.With("component", "api"))
	apiServer.SetCertificates(cm)
	apiServer.SetUpgrader(up)
	srv := httpdrain.New(&http.Server{Handler: apiServer, ReadHeaderTimeout: 10 * time.Second})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if err := writePIDFile(cfg.PIDFile); err != nil {
		ln.Close()
		return err
	}
	debug.FreeOSMemory() // what starting took (restore, TLS, config) is garbage now, before a predecessor hands over its traffic
	// From here the listeners accept; a predecessor stops accepting on
	// hearing it.
	if err := hs.Ready(Version); err != nil {
		log.Warn("the agent that started this one did not hear it serves; it stops after its deadline", "error", err)
	}
	sigCtx, stopSignals := context.WithCancel(context.Background())
	defer stopSignals()
	go up.onSignals(sigCtx, signals)
	ready := []any{"id", ag.ID(), "socket", cfg.Socket, "socket_group", cfg.SocketGroup, "data_dir", cfg.Agent.DataDir, "version", Version, "pid", os.Getpid(), "cpus", goruntime.GOMAXPROCS(0), "host_cpus", goruntime.NumCPU()}
	if from, ok := hs.From(); ok {
		ready = append(ready, "took_over_from_pid", from.PID, "took_over_from_version", from.Version)
	}
	log.Info("agent ready", ready...)

	select {
	case err := <-served:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	case <-up.handedOver:
		// The successor accepts on every listener: stop accepting, and
		// let the requests in flight finish.
		succ := up.successor.Load()
		log.Info("stopping: the new agent process serves; finishing the requests in flight", "successor_pid", succ.PID, "drain_timeout", cfg.Agent.DrainTimeout.String())
		dctx, cancel := context.WithTimeout(context.Background(), cfg.Agent.DrainTimeout)
		defer cancel()
		var wg sync.WaitGroup
		wg.Go(func() { px.Shutdown(dctx) })
		for _, s := range append(servers, srv) {
			wg.Go(func() { s.Drain(dctx, time.Second) })
		}
		wg.Wait()
		log.Info("drained; exiting", "successor_pid", succ.PID)
		return nil
	case <-ctx.Done():
	}
	close(up.stopping)
	log.Info("shutting down: apps keep running; the proxy stops until the agent starts again")
	// Operations in flight (a CLI deploy, a manifest's rollout) get to
	// finish, so that a swap is also recorded, within a bound under the
	// systemd unit's TimeoutStopSec; the proxy keeps serving meanwhile.
	// What is cut is recorded as interrupted at the next start.
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	srv.Drain(sctx, time.Second)
	if err := ag.Wait(sctx); err != nil {
		log.Warn("stopping with an operation still running; the next start recovers it", "error", err)
	}
	loops.stop()
	px.Shutdown(sctx)
	removePIDFile(cfg.PIDFile)
	return nil
}

// shutdownGrace bounds how long a stopping agent waits for operations in
// flight; configs/sprout-agent.service gives it 20 s before SIGKILL.
const shutdownGrace = 15 * time.Second

// serveGit serves git push deploys on git.address.
func serveGit(cfg *AgentConfig, listen func(network, addr string) (net.Listener, error), log *slog.Logger) (*httpdrain.Server, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	sock, err := filepath.Abs(cfg.Socket)
	if err != nil {
		return nil, err
	}
	gs, err := gitpush.New(gitpush.Options{
		Root: filepath.Join(cfg.Agent.DataDir, "git"), Token: cfg.Git.Token, Branch: cfg.Git.Branch,
		Hook: []string{exe, "git-hook"}, Env: []string{"SPROUT_SOCKET=" + sock}, Log: log,
		MaxPushBytes: cfg.Agent.MaxUploadBytes,
	})
	if err != nil {
		return nil, fmt.Errorf("config git: %w", err)
	}
	ln, err := listen("tcp", cfg.Git.Address)
	if err != nil {
		return nil, fmt.Errorf("config git.address: cannot listen on %s: %w", cfg.Git.Address, err)
	}
	srv := httpdrain.New(&http.Server{Handler: gs, ReadHeaderTimeout: 30 * time.Second})
	go srv.Serve(ln)
	log.Info("git push deploys served", "remote", "http://"+ln.Addr().String()+"/<app>.git", "branch", cfg.Git.Branch)
	return srv, nil
}

func metricsMux(m *metrics.Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	return mux
}

// listenSocket opens the API socket with owner-only permissions, or, with
// a group, mode 0660 and that group; it replaces a stale socket file but
// never a live agent's. Started by an upgrade, the agent takes over its
// predecessor's socket.
func listenSocket(hs *handover.Set, path, group string) (net.Listener, error) {
	gid := -1
	if group != "" {
		g, err := lookupGroup(group)
		if err != nil {
			return nil, err
		}
		gid = g
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if _, err := os.Stat(path); err == nil && !hs.Inherits("unix", path) {
		if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
			conn.Close()
			return nil, fmt.Errorf("another agent already listens on %s (stop it, or give this one another --socket and --data-dir)", path)
		}
		os.Remove(path)
	}
	old := umask(0o177)
	ln, err := hs.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on socket %s: %w", path, err)
	}
	mode := os.FileMode(0o600)
	if gid >= 0 {
		// The group first, then its permission: no moment where the
		// socket's former group could connect.
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("config socket_group: cannot give the socket %s to group %s: %w (the agent must run as root or be a member of it)", path, group, err)
		}
		mode = 0o660
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// lookupGroup finds a group by name or id.
func lookupGroup(group string) (int, error) {
	g, err := user.LookupGroup(group)
	if err != nil {
		if g, err = user.LookupGroupId(group); err != nil {
			return 0, fmt.Errorf("config socket_group: no group %q on this host (create it with `groupadd %s`, then add the deploying users to it)", group, group)
		}
	}
	return strconv.Atoi(g.Gid)
}
