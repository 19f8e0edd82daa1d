package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
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
	if cfg.Proxy.MaxBodyBytes != 100<<20 || cfg.Agent.Bundle.MaxBytes != 1<<30 || cfg.Agent.KeepVersions != 3 {
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
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "agent.yaml")
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

func TestAppNameFromPath(t *testing.T) {
	for in, want := range map[string]string{"app.zip": "app", "/x/My_App.tar.gz": "my-app", "./site/": "site", "v1.2.tgz": "v1-2", "!!!.zip": "app"} {
		if got := appNameFromPath(in); got != want {
			t.Errorf("%s -> %s, want %s", in, got, want)
		}
	}
}
