package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"

	"github.com/sprout-paas/sprout/bundle"
)

// Git names a commit of a git repository: URL#ref, where ref is a
// branch, a tag or a commit (the remote's HEAD when left out).
type Git struct {
	// URL has no credentials; user and password are kept apart.
	URL      string
	Ref      string
	user     string
	password string
}

// String is the reference without credentials, for records and logs.
func (g Git) String() string {
	if g.Ref == "" {
		return g.URL
	}
	return g.URL + "#" + g.Ref
}

var refRe = regexp.MustCompile(`^[A-Za-z0-9._/@+-]+$`) // and at most 200 bytes

func isGitURL(s string) bool {
	for _, p := range []string{"https://", "http://", "file://", "git://", "ssh://"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// ParseGit reads URL#ref. Credentials in the URL (https://user:token@host)
// are taken out of it: they reach git through its environment, never its
// arguments, so they do not show in process lists, logs or records.
func ParseGit(s string) (Git, error) {
	raw, ref, _ := strings.Cut(s, "#")
	u, err := url.Parse(raw)
	if err != nil || !isGitURL(raw) || (u.Host == "" && u.Scheme != "file") {
		return Git{}, fmt.Errorf("%w: %q is not a git URL like https://host/owner/repo.git#main", ErrInvalid, redact(raw))
	}
	if ref != "" && (len(ref) > 200 || !refRe.MatchString(ref) || strings.HasPrefix(ref, "-") || strings.Contains(ref, "..")) {
		return Git{}, fmt.Errorf("%w: %q is not a branch, tag or commit name", ErrInvalid, ref)
	}
	g := Git{Ref: ref}
	if u.User != nil {
		g.user = u.User.Username()
		g.password, _ = u.User.Password()
		u.User = nil
	}
	g.URL = u.String()
	return g, nil
}

// redact drops credentials from a URL-ish string.
func redact(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		u.User = url.User("***")
		return u.String()
	}
	return s
}

// gitEnv runs git with no prompts, no system config, and credentials (if
// any) as an HTTP header set through the environment.
func (g Git) env() []string {
	env := append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1", "GIT_ASKPASS=/bin/false",
		"GIT_PROTOCOL_FROM_USER=0", "GIT_ALLOW_PROTOCOL=https:http:file:git:ssh")
	if g.user != "" || g.password != "" {
		auth := base64.StdEncoding.EncodeToString([]byte(g.user + ":" + g.password))
		env = append(env, "GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=http.extraHeader", "GIT_CONFIG_VALUE_0=Authorization: Basic "+auth)
	}
	return env
}

// git runs one git command and returns a one-line error with its stderr.
func (g Git) git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = g.env()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errOut.String())
		if msg == "" {
			msg = err.Error()
		}
		msg = strings.ReplaceAll(msg, "\n", "; ")
		if g.password != "" {
			msg = strings.ReplaceAll(msg, g.password, "***")
		}
		return "", errors.New(msg)
	}
	return strings.TrimSpace(out.String()), nil
}

// FetchGit fetches one commit of g shallowly (depth 1) into a temporary
// checkout under workDir, and writes its tree to w as a tar archive of at
// most max bytes.
func FetchGit(ctx context.Context, g Git, workDir string, w io.Writer, max int64) (Fetched, error) {
	if err := os.MkdirAll(workDir, 0o700); err != nil {
		return Fetched{}, err
	}
	dir, err := os.MkdirTemp(workDir, "git-")
	if err != nil {
		return Fetched{}, err
	}
	defer os.RemoveAll(dir)
	ref := g.Ref
	if ref == "" {
		ref = "HEAD"
	}
	if _, err := g.git(ctx, dir, "init", "-q"); err != nil {
		return Fetched{}, fmt.Errorf("git init: %v", err)
	}
	if _, err := g.git(ctx, dir, "fetch", "-q", "--depth", "1", "--no-tags", g.URL, ref); err != nil {
		return Fetched{}, fmt.Errorf("%w: git fetch %s: %v", ErrNotFound, g, err)
	}
	if _, err := g.git(ctx, dir, "-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD"); err != nil {
		return Fetched{}, fmt.Errorf("git checkout %s: %v", g, err)
	}
	commit, err := g.git(ctx, dir, "rev-parse", "HEAD")
	if err != nil {
		return Fetched{}, err
	}
	h := sha256.New()
	cw := &capWriter{w: io.MultiWriter(w, h), max: max}
	if err := bundle.Pack(dir, cw); err != nil {
		if cw.over {
			return Fetched{}, fmt.Errorf("%w: the tree of %s packs to more than bundle.max_upload_bytes (%d)", ErrTooLarge, g, max)
		}
		return Fetched{}, fmt.Errorf("packing %s: %w", g, err)
	}
	return Fetched{Ref: g.String(), Bytes: cw.n, SHA256: hex.EncodeToString(h.Sum(nil)), Commit: commit}, nil
}

// capWriter fails once more than max bytes were written.
type capWriter struct {
	w    io.Writer
	n    int64
	max  int64
	over bool
}

func (c *capWriter) Write(p []byte) (int, error) {
	if c.n+int64(len(p)) > c.max {
		c.over = true
		return 0, ErrTooLarge
	}
	c.n += int64(len(p))
	return c.w.Write(p)
}
