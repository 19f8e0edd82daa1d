package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/go-units"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/bundle"
	"github.com/sprout-paas/sprout/certs"
	"github.com/sprout-paas/sprout/fleet"
	"github.com/sprout-paas/sprout/health"
	"github.com/sprout-paas/sprout/proxy"
	"github.com/sprout-paas/sprout/source"
	"github.com/sprout-paas/sprout/transport"
)

// DefaultConfigFile is read when it exists and no --config is given.
const DefaultConfigFile = "/etc/sprout/agent.yaml"

// defaults is every configuration key with its default value. A key
// missing here is refused in a config file.
var defaults = map[string]any{
	"data_dir":                          "/var/lib/sprout",
	"socket":                            "/run/sprout/sprout.sock",
	"socket_group":                      "",
	"pid_file":                          "",
	"log_level":                         "info",
	"log_format":                        "json",
	"cpus":                              "auto",
	"metrics.address":                   "127.0.0.1:9273",
	"proxy.bind_address":                "",
	"proxy.max_body_bytes":              "100MiB",
	"proxy.upstream_timeout":            "60s",
	"proxy.idle_timeout":                "120s",
	"proxy.header_timeout":              "20s",
	"proxy.max_header_bytes":            "32KiB",
	"proxy.start_wait":                  "10s",
	"proxy.access_log":                  true,
	"proxy.http_port":                   proxy.DefaultHTTPPort,
	"proxy.https_port":                  proxy.DefaultHTTPSPort,
	"proxy.default_app":                 "",
	"deploy.keep_versions":              agent.DefaultKeepVersions,
	"deploy.drain_timeout":              "30s",
	"deploy.stream_grace":               "5s",
	"deploy.stop_grace":                 "10s",
	"deploy.default_port":               agent.DefaultPort,
	"bundle.max_upload_bytes":           "512MiB",
	"bundle.max_bytes":                  "1GiB",
	"bundle.max_files":                  bundle.DefaultMaxFiles,
	"bundle.max_ratio":                  bundle.DefaultMaxRatio,
	"health.interval":                   "500ms",
	"health.timeout":                    "2s",
	"health.healthy_threshold":          health.DefaultHealthyThreshold,
	"health.grace":                      "0s",
	"health.deadline":                   "5m",
	"health.monitor_interval":           "5s",
	"health.restart_after":              agent.DefaultRestartAfter,
	"health.rules.window":               "5m",
	"health.rules.min_requests":         10,
	"health.rules.warning_5xx":          0.01,
	"health.rules.degraded_5xx":         0.05,
	"health.rules.severe_5xx":           0.10,
	"health.rules.warning_4xx":          0.25,
	"health.rules.warning_p99":          "2s",
	"health.rules.restart_window":       "10m",
	"health.rules.warning_restarts":     1,
	"health.rules.degraded_restarts":    3,
	"health.rules.severe_check_failing": "30s",
	"container.log_max_size":            "10m",
	"container.log_max_files":           3,
	"container.kept_logs_per_app":       "50MiB",
	"container.pull_timeout":            "5m",
	"watch.interval":                    "10s",
	"environment":                       "",
	"host_id":                           "",
	"apps":                              []any{},
	"git.address":                       "",
	"git.token":                         "",
	"git.token_file":                    "",
	"git.branch":                        "main",
	"s3.region":                         "",
	"s3.endpoint":                       "",
	"s3.path_style":                     false,
	"hooks.enabled":                     true,
	"hooks.timeout":                     "5m",
	"volumes.host_dirs":                 agent.DefaultHostDirs,
	"tls.acme.email":                    "",
	"tls.acme.directory":                certs.DefaultDirectory,
	"tls.acme.ca_root":                  "",
	"tls.storage":                       "",
}

// DeclaredApp is an app the config declares: it follows a manifest in S3
// from the agent's first start, as a fresh instance must.
type DeclaredApp struct {
	Name     string
	Manifest string
	Port     int
}

// GitConfig configures the git push server.
type GitConfig struct {
	// Address is where git is served ("" for off).
	Address, Token, Branch string
}

// AgentConfig is everything `sprout agent` needs, typed and checked.
type AgentConfig struct {
	Socket string
	// PIDFile, when set, is where the agent writes its process id, at
	// start and after each upgrade (systemd's PIDFile=).
	PIDFile string
	// SocketGroup, when set, may use the socket too (mode 0660): a group
	// name or id.
	SocketGroup string
	// PullTimeout bounds one image pull.
	PullTimeout time.Duration
	// S3 says how the agent reaches S3 for bundles and manifests.
	S3 source.S3Options
	// Git configures git push deploys.
	Git GitConfig
	// Warnings are things the agent logs at start: allowed, but unwise.
	Warnings []string
	// WatchInterval is how often followed manifests are polled; Apps are
	// the apps declared in the config, which follow manifests.
	WatchInterval time.Duration
	Apps          []DeclaredApp
	// Environment is the S3 prefix of the environment (fleet) the host
	// belongs to, "" for none; HostID is the host's id in it.
	Environment, HostID string
	// MetricsAddress is where /metrics is served, "" for nowhere.
	MetricsAddress string
	LogLevel       slog.Level
	LogFormat      string
	// CPUs is how many CPUs the agent's Go code runs on at once
	// (GOMAXPROCS); 0 leaves the runtime's choice (GOMAXPROCS is set in
	// the environment).
	CPUs  int
	Agent agent.Config
	Proxy proxy.Options
	// TLS says where the proxy's certificates come from (package certs).
	TLS certs.Options
}

// newViper reads the configuration: defaults, then the file, then SPROUT_*
// environment variables, then flags (highest).
func newViper(flags *pflag.FlagSet) (*viper.Viper, error) {
	v := viper.New()
	for k, d := range defaults {
		v.SetDefault(k, d)
	}
	v.SetEnvPrefix("SPROUT")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	for flag, key := range map[string]string{"data-dir": "data_dir", "socket": "socket", "log-level": "log_level", "pid-file": "pid_file"} {
		if f := flags.Lookup(flag); f != nil {
			if err := v.BindPFlag(key, f); err != nil {
				return nil, err
			}
		}
	}
	file, _ := flags.GetString("config")
	if file == "" {
		file = os.Getenv("SPROUT_CONFIG")
	}
	explicit := file != ""
	if !explicit {
		if _, err := os.Stat(DefaultConfigFile); err == nil {
			file = DefaultConfigFile
		}
	}
	if file == "" {
		return v, nil
	}
	v.SetConfigFile(file)
	if err := v.ReadInConfig(); err != nil {
		return nil, fmt.Errorf("config file %s: %w", file, err)
	}
	// Refuse keys we do not know: a typo must not silently do nothing.
	fileOnly := viper.New()
	fileOnly.SetConfigFile(file)
	if err := fileOnly.ReadInConfig(); err != nil {
		return nil, fmt.Errorf("config file %s: %w", file, err)
	}
	for _, k := range fileOnly.AllKeys() {
		if _, ok := defaults[k]; !ok {
			known := slices.Sorted(func(yield func(string) bool) {
				for k := range defaults {
					if !yield(k) {
						return
					}
				}
			})
			return nil, fmt.Errorf("config file %s: unknown key %q (known keys: %s)", file, k, strings.Join(known, ", "))
		}
	}
	return v, nil
}

// configReader turns raw values into typed ones, collecting the first error
// with the key that caused it.
type configReader struct {
	v   *viper.Viper
	err error
}

func (r *configReader) fail(key, format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("config %s: %s", key, fmt.Sprintf(format, args...))
	}
}

func (r *configReader) str(key string) string { return strings.TrimSpace(r.v.GetString(key)) }

func (r *configReader) duration(key string) time.Duration {
	s := r.str(key)
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		r.fail(key, "%q is not a duration like 500ms, 30s or 5m", s)
	}
	return d
}

func (r *configReader) size(key string) int64 {
	s := r.str(key)
	n, err := units.RAMInBytes(s)
	if err != nil || n < 0 {
		r.fail(key, "%q is not a size like 512KiB, 100MiB or 1GiB", s)
	}
	return n
}

func (r *configReader) integer(key string, min, max int) int {
	s := r.str(key)
	n, err := strconv.Atoi(s)
	if err != nil || n < min || n > max {
		r.fail(key, "%q must be a whole number from %d to %d", s, min, max)
	}
	return n
}

func (r *configReader) share(key string) float64 {
	s := r.str(key)
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f > 1 {
		r.fail(key, "%q must be a share between 0 and 1 (0.05 is 5%%)", s)
	}
	return f
}

// apps reads the declared apps: a list of {name, manifest, port}.
func (r *configReader) apps(key string) []DeclaredApp {
	raw, _ := r.v.Get(key).([]any)
	var out []DeclaredApp
	for i, item := range raw {
		m, ok := item.(map[string]any)
		if !ok {
			r.fail(key, "entry %d must be a mapping with name, manifest and port", i+1)
			continue
		}
		var d DeclaredApp
		for k, v := range m {
			switch k {
			case "name":
				d.Name = fmt.Sprint(v)
			case "manifest":
				d.Manifest = fmt.Sprint(v)
			case "port":
				n, err := strconv.Atoi(fmt.Sprint(v))
				if err != nil || n < 1 || n > 65535 {
					r.fail(key, "entry %d: port %v is not a port", i+1, v)
				}
				d.Port = n
			default:
				r.fail(key, "entry %d: unknown key %q (use name, manifest and port)", i+1, k)
			}
		}
		if d.Name == "" || !strings.HasPrefix(d.Manifest, "s3://") {
			r.fail(key, "entry %d needs a name and a manifest s3://bucket/key", i+1)
		}
		out = append(out, d)
	}
	return out
}

// absPaths reads a list of absolute paths: a YAML list, or a
// comma-separated string from the environment.
func (r *configReader) absPaths(key string) []string {
	var out []string
	for _, item := range r.v.GetStringSlice(key) {
		for _, p := range strings.Split(item, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			if !filepath.IsAbs(p) {
				r.fail(key, "%q is not an absolute path", p)
			}
			out = append(out, filepath.Clean(p))
		}
	}
	if out == nil {
		out = []string{}
	}
	return out
}

// cpus reads how many CPUs the agent runs on: a number, or auto, half of
// those the host (or its cgroup's limit) gives, at least 1. Sprout's proxy
// shares the host with the apps it serves; on a host of 2 CPUs, one
// thread of Go code forwards more requests than two, for less CPU each
// (two spend it waking each other: README, Performance). A GOMAXPROCS
// set in the environment wins over auto (0: the runtime's own choice).
func (r *configReader) cpus(key string, fromEnv bool, available int) int {
	if s := r.str(key); s != "auto" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1024 {
			r.fail(key, "%q must be auto or a whole number from 1 to 1024", s)
		}
		return n
	}
	if fromEnv {
		return 0
	}
	return max(1, available/2)
}

func (r *configReader) boolean(key string) bool {
	s := r.str(key)
	b, err := strconv.ParseBool(s)
	if err != nil {
		r.fail(key, "%q must be true or false", s)
	}
	return b
}

// LoadAgentConfig reads and checks the agent's configuration.
func LoadAgentConfig(flags *pflag.FlagSet) (*AgentConfig, error) {
	v, err := newViper(flags)
	if err != nil {
		return nil, err
	}
	r := &configReader{v: v}
	c := &AgentConfig{Socket: r.str("socket"), SocketGroup: r.str("socket_group"), PIDFile: r.str("pid_file"), LogFormat: r.str("log_format"), MetricsAddress: r.str("metrics.address")}
	if c.MetricsAddress != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddress); err != nil {
			r.fail("metrics.address", "%q is not host:port (use \"\" to turn metrics off)", c.MetricsAddress)
		}
	}
	if err := c.LogLevel.UnmarshalText([]byte(r.str("log_level"))); err != nil {
		r.fail("log_level", "%q must be debug, info, warn or error", r.str("log_level"))
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		r.fail("log_format", "%q must be json or text", c.LogFormat)
	}
	c.CPUs = r.cpus("cpus", os.Getenv("GOMAXPROCS") != "", runtime.GOMAXPROCS(0))
	c.Proxy = proxy.Options{
		BindAddress:     r.str("proxy.bind_address"),
		MaxBodyBytes:    r.size("proxy.max_body_bytes"),
		UpstreamTimeout: r.duration("proxy.upstream_timeout"),
		IdleTimeout:     r.duration("proxy.idle_timeout"),
		HeaderTimeout:   r.duration("proxy.header_timeout"),
		MaxHeaderBytes:  int(r.size("proxy.max_header_bytes")),
		AccessLog:       r.boolean("proxy.access_log"),
		StartWait:       r.duration("proxy.start_wait"),
		HTTPPort:        r.integer("proxy.http_port", 1, 65535),
		HTTPSPort:       r.integer("proxy.https_port", 1, 65535),
		DefaultApp:      r.str("proxy.default_app"),
	}
	if c.Proxy.HTTPPort == c.Proxy.HTTPSPort {
		r.fail("proxy.https_port", "%d is proxy.http_port too: the shared HTTP and HTTPS ports must differ", c.Proxy.HTTPSPort)
	}
	if a := c.Proxy.DefaultApp; a != "" {
		if err := agent.ValidateAppName(a); err != nil {
			r.fail("proxy.default_app", "%v", err)
		}
	}
	if c.Proxy.HeaderTimeout == 0 {
		r.fail("proxy.header_timeout", "must be more than 0s: it bounds how long a client may take to send a request's headers (the default is %s)", proxy.DefaultHeaderTimeout)
	}
	if n := c.Proxy.MaxHeaderBytes; n < proxy.MinMaxHeaderBytes || n > proxy.MaxMaxHeaderBytes {
		r.fail("proxy.max_header_bytes", "%q must be between %s and %s (the default is %s)", r.str("proxy.max_header_bytes"),
			units.BytesSize(proxy.MinMaxHeaderBytes), units.BytesSize(proxy.MaxMaxHeaderBytes), units.BytesSize(proxy.DefaultMaxHeaderBytes))
	}
	if c.Proxy.StartWait == 0 {
		c.Proxy.StartWait = -1 // 0s: answer 503 at once
	}
	c.Agent = agent.Config{
		DataDir:        r.str("data_dir"),
		KeepVersions:   r.integer("deploy.keep_versions", 1, 100),
		DrainTimeout:   r.duration("deploy.drain_timeout"),
		StreamGrace:    r.duration("deploy.stream_grace"),
		StopGrace:      r.duration("deploy.stop_grace"),
		DefaultPort:    r.integer("deploy.default_port", 1, 65535),
		MaxUploadBytes: r.size("bundle.max_upload_bytes"),
		Bundle: bundle.Limits{
			MaxBytes: r.size("bundle.max_bytes"),
			MaxFiles: r.integer("bundle.max_files", 1, 10_000_000),
			MaxRatio: int64(r.integer("bundle.max_ratio", 2, 100_000)),
		},
		Health: health.Settings{
			Interval:         r.duration("health.interval"),
			Timeout:          r.duration("health.timeout"),
			HealthyThreshold: r.integer("health.healthy_threshold", 1, 100),
			Grace:            r.duration("health.grace"),
			Deadline:         r.duration("health.deadline"),
		},
		LogMaxSize:      r.str("container.log_max_size"),
		LogMaxFiles:     strconv.Itoa(r.integer("container.log_max_files", 1, 100)),
		LogBytesPerApp:  r.size("container.kept_logs_per_app"),
		MonitorInterval: r.duration("health.monitor_interval"),
		RestartAfter:    r.integer("health.restart_after", 0, 1000),
		BindAddress:     r.str("proxy.bind_address"),
		HooksOff:        !r.boolean("hooks.enabled"),
		HookTimeout:     r.duration("hooks.timeout"),
		HostDirs:        r.absPaths("volumes.host_dirs"),
		Rules: health.Rules{
			Window:             r.duration("health.rules.window"),
			MinRequests:        int64(r.integer("health.rules.min_requests", 1, 1_000_000)),
			Warning5xx:         r.share("health.rules.warning_5xx"),
			Degraded5xx:        r.share("health.rules.degraded_5xx"),
			Severe5xx:          r.share("health.rules.severe_5xx"),
			Warning4xx:         r.share("health.rules.warning_4xx"),
			WarningP99:         r.duration("health.rules.warning_p99"),
			RestartWindow:      r.duration("health.rules.restart_window"),
			WarningRestarts:    r.integer("health.rules.warning_restarts", 0, 1000),
			DegradedRestarts:   r.integer("health.rules.degraded_restarts", 1, 1000),
			SevereCheckFailing: r.duration("health.rules.severe_check_failing"),
		},
	}
	c.PullTimeout = r.duration("container.pull_timeout")
	c.WatchInterval = r.duration("watch.interval")
	c.Apps = r.apps("apps")
	c.Git = GitConfig{Address: r.str("git.address"), Token: r.str("git.token"), Branch: r.str("git.branch")}
	if f := r.str("git.token_file"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			r.fail("git.token_file", "%v", err)
		}
		c.Git.Token = strings.TrimSpace(string(b))
	}
	if f := v.ConfigFileUsed(); f != "" && v.InConfig("git") && r.str("git.token") != "" {
		if st, err := os.Stat(f); err == nil && st.Mode().Perm()&0o044 != 0 {
			c.Warnings = append(c.Warnings, fmt.Sprintf("config file %s holds git.token and other users can read it (mode %o): chmod 600 it, or use git.token_file", f, st.Mode().Perm()))
		}
	}
	if c.Git.Address != "" && c.Git.Token == "" {
		r.fail("git.token", "is empty while git.address is set: set the token git pushers use as their password (or git.token_file)")
	}
	c.S3 = r.s3()
	c.TLS = r.tls(c.Agent.DataDir, c.S3, c.Proxy)
	if c.TLS.Email == "" && (c.TLS.Storage != "" || c.TLS.CARoot != "" || c.TLS.Directory != certs.DefaultDirectory) {
		c.Warnings = append(c.Warnings, "tls.acme.email is empty, so ACME is off and the other tls.* keys do nothing: set it for the agent to obtain certificates")
	}
	c.Environment, c.HostID = r.str("environment"), r.str("host_id")
	if c.Environment != "" {
		if _, err := source.ParseS3URL(c.Environment); err != nil {
			r.fail("environment", "%q is not s3://bucket/prefix/: %v", c.Environment, err)
		}
	}
	if c.HostID != "" {
		if err := fleet.ValidateHostID(c.HostID); err != nil {
			r.fail("host_id", "%v", err)
		}
	}
	if _, err := units.RAMInBytes(c.Agent.LogMaxSize); err != nil {
		r.fail("container.log_max_size", "%q is not a size like 10m", c.Agent.LogMaxSize)
	}
	if c.Agent.DataDir == "" {
		r.fail("data_dir", "must not be empty")
	}
	if c.Socket == "" {
		r.fail("socket", "must not be empty")
	}
	if r.err == nil {
		if err := c.Agent.Health.Validate(); err != nil {
			r.fail("health", "%v", err)
		}
		rules := c.Agent.Rules
		if rules.Window < 10*time.Second || rules.Window > 5*time.Minute {
			r.fail("health.rules.window", "%s must be between 10s and 5m", rules.Window)
		}
		if !(rules.Warning5xx <= rules.Degraded5xx && rules.Degraded5xx <= rules.Severe5xx) {
			r.fail("health.rules", "warning_5xx <= degraded_5xx <= severe_5xx must hold")
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	return c, nil
}

// s3Options reads how to reach S3, for the agent and for `deploy --s3`.
func s3Options(flags *pflag.FlagSet) (source.S3Options, error) {
	v, err := newViper(flags)
	if err != nil {
		return source.S3Options{}, err
	}
	r := &configReader{v: v}
	o := r.s3()
	return o, r.err
}

func (r *configReader) s3() source.S3Options {
	return source.S3Options{Region: r.str("s3.region"), Endpoint: r.str("s3.endpoint"), PathStyle: r.boolean("s3.path_style")}
}

// tls reads where certificates come from; certs.Options checks itself.
func (r *configReader) tls(dataDir string, s3 source.S3Options, px proxy.Options) certs.Options {
	o := certs.Options{
		DataDir: dataDir, S3: s3,
		Email: r.str("tls.acme.email"), Directory: r.str("tls.acme.directory"),
		CARoot: r.str("tls.acme.ca_root"), Storage: r.str("tls.storage"),
		// Where the proxy answers the CA's challenges: its shared ports.
		ListenHost: px.BindAddress, HTTPPort: px.HTTPPort, TLSPort: px.HTTPSPort,
	}
	if err := o.Validate(); err != nil && r.err == nil {
		r.err = fmt.Errorf("config %w", err)
	}
	return o
}

// agentDialer is how the CLI reaches the agent: through ssh (or another
// socket) with --host or SPROUT_HOST, else the socket socketPath names.
func agentDialer(flags *pflag.FlagSet) (transport.Dialer, error) {
	host, _ := flags.GetString("host")
	if host != "" && flags.Changed("socket") {
		return nil, errors.New("give --host (an agent on another host) or --socket (one on this host), not both")
	}
	if host == "" {
		host = os.Getenv("SPROUT_HOST")
	}
	if host != "" {
		return transport.ParseHost(host, os.Getenv("SPROUT_SSH_COMMAND"))
	}
	sock, err := socketPath(flags)
	if err != nil {
		return nil, err
	}
	return transport.Unix{Path: sock}, nil
}

// socketPath is where the CLI finds the agent: --socket, SPROUT_SOCKET,
// the config file, or the default.
func socketPath(flags *pflag.FlagSet) (string, error) {
	v, err := newViper(flags)
	if err != nil {
		return "", err
	}
	return v.GetString("socket"), nil
}
