package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sprout-paas/sprout/runtime"
	"github.com/sprout-paas/sprout/store"
)

// Logs of containers that are gone are kept under the data dir, one file
// per app and version, so that a user can still read why an earlier
// version crashed. Each app's files are bounded together.

// DefaultLogBytesPerApp bounds the kept logs of one app.
const DefaultLogBytesPerApp = 50 << 20

func logsDir(c Config, app string) string { return filepath.Join(c.DataDir, "logs", app) }

func logFile(c Config, app, label string) string {
	return filepath.Join(logsDir(c, app), label+".log")
}

func buildLogFile(c Config, app, label string) string {
	return filepath.Join(logsDir(c, app), label+".deploy.log")
}

// maxBuildLog bounds the kept transcript of one deploy.
const maxBuildLog = 4 << 20

// transcript tees a deploy's progress into the version's deploy log, so
// that its build output can be read later (`sprout versions --build-log`).
type transcript struct {
	Progress
	f       *os.File
	written int64
}

func (a *Agent) newTranscript(p Progress, app, label string) *transcript {
	t := &transcript{Progress: p}
	if err := os.MkdirAll(logsDir(a.cfg, app), 0o700); err == nil {
		t.f, _ = os.OpenFile(buildLogFile(a.cfg, app, label), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	}
	return t
}

func (t *transcript) write(s string) {
	if t.f == nil || t.written > maxBuildLog {
		return
	}
	n, _ := fmt.Fprintf(t.f, "%s %s\n", time.Now().UTC().Format("15:04:05.000"), s)
	t.written += int64(n)
}

// Step implements Progress.
func (t *transcript) Step(name string) { t.write("==> " + name); t.Progress.Step(name) }

// Line implements Progress.
func (t *transcript) Line(text string) { t.write("    " + text); t.Progress.Line(text) }

func (t *transcript) close(result string) {
	if t.f != nil {
		t.write(result)
		t.f.Close()
	}
}

// BuildLog writes the transcript of a version's deploy to w.
func (a *Agent) BuildLog(app, label string, w io.Writer) error {
	if _, err := a.store.Version(app, label); err != nil {
		return fmt.Errorf("version %s of %s: %w", label, app, err)
	}
	f, err := os.Open(buildLogFile(a.cfg, app, label))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: the deploy log of %s was not kept or was trimmed (container.kept_logs_per_app)", ErrNotFound, label)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// archiveLogs appends a container's output (with timestamps) to its
// version's log file before the container is removed, then trims the app's
// kept logs to their bound.
func (a *Agent) archiveLogs(ctx context.Context, app, label, containerID string) {
	rc, err := a.rt.LogStream(ctx, containerID, runtime.LogOptions{Timestamps: true})
	if err != nil {
		a.log.Warn("keep logs of a retired container", "app", app, "label", label, "error", err)
		return
	}
	defer rc.Close()
	if err := os.MkdirAll(logsDir(a.cfg, app), 0o700); err != nil {
		return
	}
	f, err := os.OpenFile(logFile(a.cfg, app, label), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return
	}
	fmt.Fprintf(f, "%s ---- sprout: container %s of %s, kept after it was removed\n", time.Now().UTC().Format(time.RFC3339Nano), shortID(containerID), label)
	io.Copy(f, io.LimitReader(rc, a.cfg.LogBytesPerApp))
	f.Close()
	a.trimLogs(app)
}

// trimLogs removes an app's oldest kept log files beyond its bound.
func (a *Agent) trimLogs(app string) {
	entries, err := os.ReadDir(logsDir(a.cfg, app))
	if err != nil {
		return
	}
	type file struct {
		path string
		size int64
		mod  time.Time
	}
	var files []file
	var total int64
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		files = append(files, file{filepath.Join(logsDir(a.cfg, app), e.Name()), info.Size(), info.ModTime()})
		total += info.Size()
	}
	slices.SortFunc(files, func(x, y file) int { return x.mod.Compare(y.mod) })
	for len(files) > 1 && total > a.cfg.LogBytesPerApp {
		os.Remove(files[0].path)
		total -= files[0].size
		files = files[1:]
	}
}

// LogRequest says which logs to show.
type LogRequest struct {
	App string
	// Label is the version; empty for the serving one.
	Label  string
	Follow bool
	Since  time.Time
	Tail   int
}

// Logs writes an app's container output to w: the serving container's
// (live, following it when asked), or the kept logs of an earlier version.
func (a *Agent) Logs(ctx context.Context, req LogRequest, w io.Writer) error {
	app, err := a.App(req.App)
	if err != nil {
		return err
	}
	label := req.Label
	if label == "" {
		label = app.Serving
	}
	if label == "" {
		return fmt.Errorf("%w: %s has no serving version yet; name one with --label", ErrNotFound, req.App)
	}
	if label == app.Serving && len(app.Instances) > 1 {
		return a.instanceLogs(ctx, app.Instances, req, w)
	}
	if label == app.Serving && app.ContainerID != "" {
		rc, err := a.rt.LogStream(ctx, app.ContainerID, runtime.LogOptions{Follow: req.Follow, Since: req.Since, Tail: req.Tail})
		if err == nil {
			defer rc.Close()
			_, err = io.Copy(w, rc)
			if errors.Is(err, context.Canceled) || ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	if req.Follow {
		return fmt.Errorf("%w: %s is not running, so its logs cannot be followed; drop --follow to read what it wrote", ErrConflict, label)
	}
	f, err := os.Open(logFile(a.cfg, req.App, label))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: no logs kept for %s of %s (they are kept once a version's container is removed, up to %d MiB per app)", ErrNotFound, label, req.App, a.cfg.LogBytesPerApp>>20)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	return copyLogLines(f, w, req.Since, req.Tail)
}

// instanceLogs writes the output of every instance side by side, each
// line after its instance's name, as `docker compose logs` does; with
// follow, until ctx ends.
func (a *Agent) instanceLogs(ctx context.Context, ins []store.Instance, req LogRequest, w io.Writer) error {
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(ins))
	for i, in := range ins {
		rc, err := a.rt.LogStream(ctx, in.ContainerID, runtime.LogOptions{Follow: req.Follow, Since: req.Since, Tail: req.Tail})
		if err != nil {
			errs[i] = fmt.Errorf("%s: %w", instanceName(in), err)
			continue
		}
		prefix := instanceName(in) + " | "
		wg.Go(func() {
			defer rc.Close()
			sc := bufio.NewScanner(rc)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				mu.Lock()
				_, err := fmt.Fprintf(w, "%s%s\n", prefix, sc.Text())
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return errors.Join(errs...)
}

// copyLogLines copies timestamped lines written at or after since (all
// when zero), only the last tail when tail > 0.
func copyLogLines(r io.Reader, w io.Writer, since time.Time, tail int) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var ring []string
	for sc.Scan() {
		line := sc.Text()
		if !since.IsZero() {
			stamp, _, _ := strings.Cut(line, " ")
			if t, err := time.Parse(time.RFC3339Nano, stamp); err == nil && t.Before(since) {
				continue
			}
		}
		if tail <= 0 {
			if _, err := fmt.Fprintln(w, line); err != nil {
				return err
			}
			continue
		}
		ring = append(ring, line)
		if len(ring) > tail {
			ring = ring[1:]
		}
	}
	for _, line := range ring {
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return sc.Err()
}

// maxLogFileBytes bounds how much of one Logging file is printed.
const maxLogFileBytes = 1 << 20

// LogFiles writes the files a version wrote to its Dockerrun Logging
// directory (the serving version's when label is empty), each under a
// header, and the last tail lines of each when tail > 0.
func (a *Agent) LogFiles(app, label string, tail int, w io.Writer) error {
	cur, err := a.App(app)
	if err != nil {
		return err
	}
	if label == "" {
		label = cur.Serving
	}
	v, err := a.store.Version(app, label)
	if err != nil {
		return fmt.Errorf("version %q of %s: %w", label, app, err)
	}
	if v.Run.LogDir == "" {
		return fmt.Errorf("%w: %s of %s has no Logging directory in its Dockerrun.aws.json; `sprout logs --app %s` shows its output", ErrNotFound, label, app, app)
	}
	root := appLogDir(a.cfg, app, label)
	var files []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) == 0 {
		fmt.Fprintf(w, "%s of %s has written no files to %s yet\n", label, app, v.Run.LogDir)
		return nil
	}
	for _, p := range files {
		rel, _ := filepath.Rel(root, p)
		fmt.Fprintf(w, "==> %s <==\n", filepath.ToSlash(filepath.Join(v.Run.LogDir, rel)))
		if err := tailFile(p, tail, w); err != nil {
			fmt.Fprintf(w, "(%v)\n", err)
		}
	}
	return nil
}

// tailFile writes the end of a file: its last tail lines (all when 0), of
// at most its last maxLogFileBytes.
func tailFile(p string, tail int, w io.Writer) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() > maxLogFileBytes {
		f.Seek(st.Size()-maxLogFileBytes, io.SeekStart)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	lines := strings.SplitAfter(string(b), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if tail > 0 && len(lines) > tail {
		lines = lines[len(lines)-tail:]
	}
	for _, l := range lines {
		io.WriteString(w, l)
	}
	if len(lines) > 0 && !strings.HasSuffix(lines[len(lines)-1], "\n") {
		io.WriteString(w, "\n")
	}
	return nil
}
