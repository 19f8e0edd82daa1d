package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

func flagsFor(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	cmd := NewRootCommand(os.Stdout, os.Stderr)
	agentCmd, _, err := cmd.Find([]string{"agent"})
	if err != nil {
		t.Fatal(err)
	}
	fs := agentCmd.Flags()
	fs.AddFlagSet(cmd.PersistentFlags())
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "agent.yaml")
	os.WriteFile(file, []byte("data_dir: /from/file\nsocket: /file.sock\nproxy:\n  upstream_timeout: 7s\nhealth:\n  interval: 1s\n"), 0o644)
	t.Setenv("SPROUT_SOCKET", "/env.sock")
	t.Setenv("SPROUT_HEALTH_INTERVAL", "3s")
	cfg, err := LoadAgentConfig(flagsFor(t, "--config", file, "--socket", "/flag.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Agent.DataDir != "/from/file" || cfg.Socket != "/flag.sock" || cfg.Agent.Health.Interval != 3*time.Second || cfg.Proxy.UpstreamTimeout != 7*time.Second {
		t.Errorf("cfg = %+v", cfg)
	}
	if cfg.Proxy.MaxBodyBytes != 100<<20 || cfg.Proxy.MaxHeaderBytes != 32<<10 || cfg.Proxy.HeaderTimeout != 20*time.Second || cfg.Agent.Bundle.MaxBytes != 1<<30 || cfg.Agent.KeepVersions != 3 {
		t.Errorf("defaults not applied: %+v", cfg)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	cases := []struct{ file, env, want string }{
		{"health:\n  interval: soon\n", "", "health.interval"},
		{"proxy:\n  max_body_bytes: lots\n", "", "proxy.max_body_bytes"},
		{"deploy:\n  keep_versions: 0\n", "", "deploy.keep_versions"},
		{"proxy:\n  acess_log: true\n", "", `unknown key "proxy.acess_log"`},
		{"", "SPROUT_DEPLOY_DRAIN_TIMEOUT=forever", "deploy.drain_timeout"},
		{"log_level: loud\n", "", "log_level"},
		{"metrics:\n  address: nowhere\n", "", "metrics.address"},
		{"health:\n  grace: 10m\n  deadline: 1m\n", "", "grace"},
		{"git:\n  address: 127.0.0.1:7070\n", "", "git.token"},
		{"apps:\n  - name: web\n    manifest: s3://b/k\n    prot: 80\n", "", `apps: entry 1: unknown key "prot"`},
		{"apps:\n  - name: web\n    manifest: /local.json\n", "", "needs a name and a manifest s3://bucket/key"},
		{"volumes:\n  host_dirs: [relative/dir]\n", "", "volumes.host_dirs"},
		{"hooks:\n  enabled: sometimes\n", "", "hooks.enabled"},
		{"proxy:\n  header_timeout: 0s\n", "", "proxy.header_timeout: must be more than 0s"},
		{"proxy:\n  max_header_bytes: 1KiB\n", "", `proxy.max_header_bytes: "1KiB" must be between 8KiB and 1MiB`},
		{"", "SPROUT_PROXY_MAX_HEADER_BYTES=2GiB", "proxy.max_header_bytes"},
		{"tls:\n  acme:\n    email: ops at example\n", "", "tls.acme.email: \"ops at example\" is not an email address"},
		{"tls:\n  acme:\n    email: ops@example.com\n    directory: http://ca.example/dir\n", "", "tls.acme.directory: \"http://ca.example/dir\" is not the https:// URL"},
		{"tls:\n  acme:\n    email: ops@example.com\n    ca_root: /nonexistent/root.pem\n", "", "tls.acme.ca_root: open /nonexistent/root.pem"},
		{"tls:\n  acme:\n    ca_root: agent.yaml\n", "", "tls.acme.ca_root: agent.yaml holds no PEM certificate"},
		{"tls:\n  storage: /var/lib/certs\n", "", "tls.storage: \"/var/lib/certs\" is not an S3 prefix"},
		{"tls:\n  acmee:\n    email: ops@example.com\n", "", `unknown key "tls.acmee.email"`},
		{"cpus: half\n", "", `cpus: "half" must be auto or a whole number from 1 to 1024`},
		{"", "SPROUT_CPUS=0", `cpus: "0" must be auto or a whole number from 1 to 1024`},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			dir := t.TempDir()
			t.Chdir(dir)
			file := filepath.Join(dir, "agent.yaml")
			os.WriteFile(file, []byte(tc.file), 0o644)
			if tc.env != "" {
				k, v, _ := strings.Cut(tc.env, "=")
				t.Setenv(k, v)
			}
			_, err := LoadAgentConfig(flagsFor(t, "--config", file))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to name %q", err, tc.want)
			}
		})
	}
	// The documented example is valid.
	if _, err := LoadAgentConfig(flagsFor(t, "--config", "../configs/agent.yaml")); err != nil {
		t.Errorf("configs/agent.yaml: %v", err)
	}
}

// TestConfigCPUs: auto is half the CPUs the runtime sees, at least one,
// unless GOMAXPROCS is set in the environment; a number is taken as it is.
func TestConfigCPUs(t *testing.T) {
	r := &configReader{v: viper.New()}
	r.v.SetDefault("cpus", "auto")
	for _, c := range []struct {
		available int
		fromEnv   bool
		want      int
	}{{1, false, 1}, {2, false, 1}, {3, false, 1}, {4, false, 2}, {16, false, 8}, {16, true, 0}} {
		if got := r.cpus("cpus", c.fromEnv, c.available); got != c.want {
			t.Errorf("auto with %d CPUs (GOMAXPROCS set: %v) = %d, want %d", c.available, c.fromEnv, got, c.want)
		}
	}
	r.v.Set("cpus", "3")
	if got := r.cpus("cpus", true, 16); got != 3 || r.err != nil {
		t.Errorf("cpus: 3 = %d, %v", got, r.err)
	}
	t.Setenv("SPROUT_CPUS", "2")
	if cfg, err := LoadAgentConfig(flagsFor(t)); err != nil || cfg.CPUs != 2 {
		t.Errorf("SPROUT_CPUS=2: %d, %v", cfg.CPUs, err)
	}
}

func TestAppNameFromPath(t *testing.T) {
	for in, want := range map[string]string{"app.zip": "app", "/x/My_App.tar.gz": "my-app", "./site/": "site", "v1.2.tgz": "v1-2", "!!!.zip": "app"} {
		if got := appNameFromPath(in); got != want {
			t.Errorf("%s -> %s, want %s", in, got, want)
		}
	}
}

func TestConfigNewKeys(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "agent.yaml")
	os.WriteFile(file, []byte("git:\n  address: 127.0.0.1:7070\n  token: s3cret\nwatch:\n  interval: 2s\napps:\n  - name: web\n    manifest: s3://fleet/envs/web/current.json\n    port: 8080\ns3:\n  endpoint: http://127.0.0.1:9000\n  path_style: true\nvolumes:\n  host_dirs: [/srv/data, /var/app]\nhooks:\n  enabled: false\n  timeout: 30s\n"), 0o644)
	os.Chmod(file, 0o644)
	cfg, err := LoadAgentConfig(flagsFor(t, "--config", file))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Git.Token != "s3cret" || cfg.WatchInterval != 2*time.Second || len(cfg.Apps) != 1 || cfg.Apps[0] != (DeclaredApp{Name: "web", Manifest: "s3://fleet/envs/web/current.json", Port: 8080}) {
		t.Errorf("cfg = %+v", cfg)
	}
	if !cfg.S3.PathStyle || cfg.S3.Endpoint != "http://127.0.0.1:9000" || !cfg.Agent.HooksOff || cfg.Agent.HookTimeout != 30*time.Second || strings.Join(cfg.Agent.HostDirs, ",") != "/srv/data,/var/app" {
		t.Errorf("cfg = %+v", cfg)
	}
	// The token sits in a file others can read: said at start.
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], "holds git.token and other users can read it") {
		t.Errorf("warnings = %v", cfg.Warnings)
	}
	os.Chmod(file, 0o600)
	if cfg, _ := LoadAgentConfig(flagsFor(t, "--config", file)); len(cfg.Warnings) != 0 {
		t.Errorf("warnings for a 0600 file: %v", cfg.Warnings)
	}
	t.Setenv("SPROUT_TLS_ACME_EMAIL", "ops@example.com")
	t.Setenv("SPROUT_TLS_STORAGE", "s3://fleet/envs/prod/tls/")
	if cfg, err := LoadAgentConfig(flagsFor(t, "--config", file)); err != nil || cfg.TLS.Email != "ops@example.com" || cfg.TLS.Storage != "s3://fleet/envs/prod/tls/" ||
		cfg.TLS.Directory != "https://acme-v02.api.letsencrypt.org/directory" || !cfg.TLS.S3.PathStyle || cfg.TLS.DataDir != cfg.Agent.DataDir {
		t.Errorf("tls: %+v, %v", cfg.TLS, err)
	}
	// The CA's challenges are answered on the proxy's shared ports.
	t.Setenv("SPROUT_PROXY_HTTP_PORT", "8080")
	t.Setenv("SPROUT_PROXY_HTTPS_PORT", "8443")
	t.Setenv("SPROUT_PROXY_BIND_ADDRESS", "127.0.0.1")
	if cfg, err := LoadAgentConfig(flagsFor(t, "--config", file)); err != nil || cfg.TLS.HTTPPort != 8080 || cfg.TLS.TLSPort != 8443 || cfg.TLS.ListenHost != "127.0.0.1" {
		t.Errorf("tls with the proxy on 127.0.0.1:8080 and :8443: %+v, %v", cfg.TLS, err)
	}
	t.Setenv("SPROUT_PROXY_HTTP_PORT", "")
	t.Setenv("SPROUT_PROXY_HTTPS_PORT", "")
	t.Setenv("SPROUT_PROXY_BIND_ADDRESS", "")
	if cfg, err := LoadAgentConfig(flagsFor(t, "--config", file)); err != nil || cfg.TLS.HTTPPort != 80 || cfg.TLS.TLSPort != 443 || cfg.TLS.ListenHost != "" {
		t.Errorf("tls with the proxy's default ports: %+v, %v", cfg.TLS, err)
	}
	t.Setenv("SPROUT_TLS_ACME_EMAIL", "")
	if cfg, _ := LoadAgentConfig(flagsFor(t, "--config", file)); len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], "tls.acme.email is empty, so ACME is off") {
		t.Errorf("tls.storage without an email: warnings %v", cfg.Warnings)
	}
	t.Setenv("SPROUT_TLS_STORAGE", "")
	t.Setenv("SPROUT_VOLUMES_HOST_DIRS", "/a,/b")
	if cfg, _ := LoadAgentConfig(flagsFor(t, "--config", file)); strings.Join(cfg.Agent.HostDirs, ",") != "/a,/b" {
		t.Errorf("host dirs from the environment: %v", cfg.Agent.HostDirs)
	}
}
