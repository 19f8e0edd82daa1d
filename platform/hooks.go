package platform

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Hook stages, at the same points of a deploy as on Elastic Beanstalk:
// prebuild after the bundle is unpacked, predeploy before the new
// container starts, postdeploy once it serves.
const (
	StagePrebuild   = "prebuild"
	StagePredeploy  = "predeploy"
	StagePostdeploy = "postdeploy"
)

// Hook directories: hooks run on deploys of a bundle, confighooks on
// configuration changes (sprout setenv).
const (
	HooksDir       = ".platform/hooks"
	ConfigHooksDir = ".platform/confighooks"
)

var stages = []string{StagePrebuild, StagePredeploy, StagePostdeploy}

// Hook is one executable of .platform/hooks or .platform/confighooks.
type Hook struct {
	// Path is relative to the bundle root, e.g.
	// .platform/hooks/predeploy/01_migrate.sh.
	Path   string `json:"path"`
	Stage  string `json:"stage"`
	Config bool   `json:"config,omitempty"`
}

// Hooks are a bundle's hooks, each list in the order they run.
type Hooks []Hook

// Stage returns the hooks of one stage, deploy hooks or confighooks.
func (hs Hooks) Stage(stage string, config bool) []Hook {
	var out []Hook
	for _, h := range hs {
		if h.Stage == stage && h.Config == config {
			out = append(out, h)
		}
	}
	return out
}

// FindHooks lists and checks the hooks of the bundle rooted at dir. A
// hook must be an executable file that starts with a #! line naming an
// interpreter this host has, or a program for this host. Anything else is
// an error naming the file and the fix, found before anything runs.
func FindHooks(dir string) (Hooks, []string, error) {
	var hooks Hooks
	var notes []string
	for _, base := range []string{HooksDir, ConfigHooksDir} {
		entries, err := os.ReadDir(filepath.Join(dir, base))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, nil, invalid(base, "%v", err)
		}
		for _, st := range entries {
			rel := base + "/" + st.Name()
			if !st.IsDir() {
				return nil, nil, invalid(rel, "hooks go in a stage folder: %s/{%s}/", base, strings.Join(stages, ","))
			}
			if !slices.Contains(stages, st.Name()) {
				return nil, nil, invalid(rel, "%q is not a hook stage; use %s", st.Name(), strings.Join(stages, ", "))
			}
			files, err := os.ReadDir(filepath.Join(dir, base, st.Name()))
			if err != nil {
				return nil, nil, invalid(rel, "%v", err)
			}
			// ReadDir sorts by name: the lexical order hooks run in.
			for _, f := range files {
				frel := rel + "/" + f.Name()
				if f.IsDir() {
					notes = append(notes, frel+"/ is a folder; only files directly in a stage folder run")
					continue
				}
				if err := checkHook(filepath.Join(dir, frel), frel); err != nil {
					return nil, nil, err
				}
				hooks = append(hooks, Hook{Path: frel, Stage: st.Name(), Config: base == ConfigHooksDir})
			}
		}
	}
	return hooks, notes, nil
}

func checkHook(path, rel string) error {
	info, err := os.Stat(path)
	if err != nil {
		return invalid(rel, "%v", err)
	}
	if !info.Mode().IsRegular() {
		return invalid(rel, "is not a regular file")
	}
	if info.Mode().Perm()&0o111 == 0 {
		return invalid(rel, "is not executable; run `chmod +x %s` before making the bundle (in git: `git update-index --chmod=+x %s`)", rel, rel)
	}
	f, err := os.Open(path)
	if err != nil {
		return invalid(rel, "%v", err)
	}
	defer f.Close()
	head := make([]byte, 256)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	if bytes.HasPrefix(head, []byte("\x7fELF")) {
		return nil
	}
	if !bytes.HasPrefix(head, []byte("#!")) {
		return invalid(rel, "line 1: no #! line; start the script with one, for example #!/bin/bash")
	}
	line, _, _ := bytes.Cut(head[2:], []byte("\n"))
	if bytes.HasSuffix(line, []byte("\r")) {
		return invalid(rel, "line 1: the file has Windows line endings (CRLF), so the interpreter is %q; convert it with `dos2unix %s`", strings.TrimSpace(string(line)), rel)
	}
	fields := strings.Fields(string(line))
	if len(fields) == 0 {
		return invalid(rel, "line 1: #! names no interpreter; use for example #!/bin/bash")
	}
	interp := fields[0]
	if filepath.Base(interp) == "env" && len(fields) > 1 {
		prog := fields[1]
		if prog == "-S" && len(fields) > 2 {
			prog = fields[2]
		}
		if _, err := exec.LookPath(prog); err != nil {
			return invalid(rel, "line 1: #!%s: this host has no %s in PATH; install it or use an interpreter it has, such as /bin/sh", strings.TrimSpace(string(line)), prog)
		}
		return nil
	}
	if st, err := os.Stat(interp); err != nil || st.IsDir() || st.Mode().Perm()&0o111 == 0 {
		return invalid(rel, "line 1: #!%s: this host has no interpreter %s; use one it has, such as #!/bin/sh or #!/bin/bash", strings.TrimSpace(string(line)), interp)
	}
	return nil
}

// IgnoredPlatformDirs lists .platform folders Sprout does not use, with why.
func IgnoredPlatformDirs(dir string) []string {
	var notes []string
	for _, d := range []string{"nginx", "httpd"} {
		if st, err := os.Stat(filepath.Join(dir, ".platform", d)); err == nil && st.IsDir() {
			notes = append(notes, fmt.Sprintf(".platform/%s is ignored: Sprout's own proxy serves the app", d))
		}
	}
	return notes
}
