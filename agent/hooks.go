package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sprout-paas/sprout/platform"
)

// runHooks runs the version's hooks of one stage (confighooks when config
// is true) in lexical order, in the version's kept bundle directory, with
// the app's environment properties. The first hook that fails, or runs
// past the hook timeout, fails the stage.
func (d *deployment) runHooks(ctx context.Context, stage string, config bool, env map[string]string) error {
	hooks := d.v.Hooks.Stage(stage, config)
	if len(hooks) == 0 {
		return nil
	}
	a := d.a
	if a.cfg.HooksOff {
		d.linef("%d %s hook(s) not run: hooks are turned off (hooks.enabled: false)", len(hooks), stage)
		return nil
	}
	if d.v.BundleDir == "" {
		return fmt.Errorf("the bundle of %s is no longer kept on this host, so its %s hooks cannot run; deploy its bundle again", d.v.Label, stage)
	}
	d.begin(stage)
	for _, h := range hooks {
		if err := d.runHook(ctx, h, env); err != nil {
			return err
		}
	}
	return nil
}

func (d *deployment) runHook(ctx context.Context, h platform.Hook, props map[string]string) error {
	a := d.a
	name := strings.TrimPrefix(h.Path, ".platform/")
	d.linef("running %s", h.Path)
	hctx, cancel := context.WithTimeout(ctx, a.cfg.HookTimeout)
	defer cancel()
	cmd := exec.CommandContext(hctx, filepath.Join(d.v.BundleDir, h.Path))
	cmd.Dir = d.v.BundleDir
	cmd.Env = hookEnv(props, d.app.Name, d.v.Label, h.Stage)
	out := &lineWriter{p: prefixProgress{d.p, "[" + name + "] "}}
	cmd.Stdout, cmd.Stderr = out, out
	// The hook and whatever it starts form one process group, so that a
	// timeout stops all of them.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	err := cmd.Run()
	out.Flush()
	took := time.Since(start).Round(time.Millisecond)
	var exit *exec.ExitError
	switch {
	case err == nil:
		d.linef("%s finished in %s", h.Path, took)
		return nil
	case errors.Is(hctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("hook %s ran longer than %s and was killed (raise hooks.timeout in the agent's config, or make the hook finish sooner)", h.Path, a.cfg.HookTimeout)
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.As(err, &exit):
		return fmt.Errorf("hook %s exited with code %d after %s; its output is above and in `sprout versions --app %s --label %s --build-log`", h.Path, exit.ExitCode(), took, d.app.Name, d.v.Label)
	}
	return fmt.Errorf("hook %s: %w", h.Path, err)
}

// hookEnv is a hook's environment: a plain PATH and HOME, the app's
// environment properties, and what Sprout says of the deploy.
func hookEnv(props map[string]string, app, label, stage string) []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"}
	if home := os.Getenv("HOME"); home != "" {
		env[1] = "HOME=" + home
	}
	for _, k := range slices.Sorted(maps.Keys(props)) {
		env = append(env, k+"="+props[k])
	}
	return append(env, "SPROUT_APP="+app, "SPROUT_VERSION="+label, "SPROUT_HOOK_STAGE="+stage)
}

// prefixProgress marks each line with where it comes from.
type prefixProgress struct {
	Progress
	prefix string
}

func (p prefixProgress) Line(text string) { p.Progress.Line(p.prefix + text) }

// keptBundleDir is where a version's unpacked bundle is kept when its
// hooks or volumes need it after the deploy.
func keptBundleDir(c Config, app, label string) string {
	return filepath.Join(c.DataDir, "versions", app, label)
}
