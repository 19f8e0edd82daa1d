// Package gitpush serves git over HTTP so that `git push` deploys an app,
// as on Heroku or Dokku. It runs git's own smart-HTTP backend (`git
// http-backend`, through net/http/cgi) behind a token, creates a bare
// repository per app on its first push, and installs a pre-receive hook
// that deploys the pushed commit of the deploy branch and streams the
// deploy back to the pusher; a failed deploy rejects the push.
package gitpush

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// Options configure a Server.
type Options struct {
	// Root holds one bare repository per app, <app>.git.
	Root string
	// Token is the password pushers give (any user name).
	Token string
	// Branch is the branch whose pushes deploy.
	Branch string
	// Hook is the command the pre-receive hook runs (the sprout binary
	// and its arguments); it reads the pushed refs on stdin.
	Hook []string
	// Env is added to the hook's environment (the agent's socket).
	Env []string
	// MaxPushBytes bounds one push's request body.
	MaxPushBytes int64
	Log          *slog.Logger
}

// Server is an http.Handler for git's smart-HTTP protocol.
type Server struct {
	o   Options
	git string
	mu  sync.Mutex
	cgi *cgi.Handler
}

var appRe = regexp.MustCompile(`^/([a-z0-9]+(?:[._-][a-z0-9]+)*)\.git(/.*)?$`)

// New checks that git is installed and that a token is set.
func New(o Options) (*Server, error) {
	if o.Token == "" {
		return nil, errors.New("git.token is empty: set the token pushers use as their password")
	}
	if o.Branch == "" {
		o.Branch = "main"
	}
	git, err := exec.LookPath("git")
	if err != nil {
		return nil, fmt.Errorf("git push deploys need git on the host (apt-get install git): %w", err)
	}
	if err := os.MkdirAll(o.Root, 0o700); err != nil {
		return nil, err
	}
	s := &Server{o: o, git: git}
	s.cgi = &cgi.Handler{
		Path: git,
		Args: []string{"http-backend"},
		Env: append([]string{
			"GIT_PROJECT_ROOT=" + o.Root,
			"GIT_HTTP_EXPORT_ALL=1",
			// http-backend allows receive-pack for an authenticated user.
			"REMOTE_USER=sprout",
			"SPROUT_GIT_BRANCH=" + o.Branch,
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		}, o.Env...),
		Stderr: os.Stderr,
	}
	// Hooks of existing repositories follow the binary's current path.
	entries, _ := os.ReadDir(o.Root)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".git") && e.IsDir() {
			if err := s.installHook(filepath.Join(o.Root, e.Name())); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// ServeHTTP authenticates, finds or creates the app's repository and
// hands the request to git http-backend, flushing as it writes so that
// the deploy's progress reaches the pusher as it happens.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, pass, ok := r.BasicAuth()
	if !ok || subtle.ConstantTimeCompare([]byte(pass), []byte(s.o.Token)) != 1 {
		w.Header().Set("WWW-Authenticate", `Basic realm="sprout git"`)
		http.Error(w, "the git token is wrong or missing (use it as the password)", http.StatusUnauthorized)
		return
	}
	m := appRe.FindStringSubmatch(r.URL.Path)
	if m == nil {
		http.Error(w, "push to /<app>.git, where <app> is lowercase letters, digits and . _ -", http.StatusNotFound)
		return
	}
	repo := filepath.Join(s.o.Root, m[1]+".git")
	if _, err := os.Stat(repo); err != nil {
		push := r.URL.Query().Get("service") == "git-receive-pack" || strings.HasSuffix(r.URL.Path, "/git-receive-pack")
		if !push {
			http.Error(w, fmt.Sprintf("app %s has no repository yet: push to it first", m[1]), http.StatusNotFound)
			return
		}
		if err := s.create(repo); err != nil {
			s.o.Log.Error("create git repository", "app", m[1], "error", err)
			http.Error(w, "cannot create the repository", http.StatusInternalServerError)
			return
		}
		s.o.Log.Info("created git repository", "app", m[1])
	}
	if r.ContentLength < 0 && r.Body != nil && r.Method == http.MethodPost {
		// CGI needs a length: git sends large pushes chunked, so spool
		// them to disk first, bounded.
		spooled, err := s.spool(w, r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		defer spooled.Close()
		defer os.Remove(spooled.Name())
	}
	s.cgi.ServeHTTP(&flusher{w}, r)
}

// spool copies a chunked request body to a temporary file and makes it
// the request's body, with its length.
func (s *Server) spool(w http.ResponseWriter, r *http.Request) (*os.File, error) {
	f, err := os.CreateTemp(s.o.Root, "push-*.tmp")
	if err != nil {
		return nil, err
	}
	max := s.o.MaxPushBytes
	if max <= 0 {
		max = 512 << 20
	}
	n, err := io.Copy(f, http.MaxBytesReader(w, r.Body, max))
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("the push is larger than %d bytes or broke off: %v", max, err)
	}
	r.Body, r.ContentLength, r.TransferEncoding = f, n, nil
	return f, nil
}

// create makes a bare repository with the deploy hook.
func (s *Server) create(repo string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := os.Stat(repo); err == nil {
		return nil
	}
	tmp := repo + ".tmp"
	os.RemoveAll(tmp)
	out, err := exec.Command(s.git, "init", "-q", "--bare", "-b", s.o.Branch, tmp).CombinedOutput()
	if err != nil {
		return fmt.Errorf("git init: %v: %s", err, out)
	}
	// Pushers may send push options (git push -o port=8080), which the
	// hook reads.
	if out, err := exec.Command(s.git, "--git-dir", tmp, "config", "receive.advertisePushOptions", "true").CombinedOutput(); err != nil {
		return fmt.Errorf("git config: %v: %s", err, out)
	}
	if err := s.installHook(tmp); err != nil {
		return err
	}
	return os.Rename(tmp, repo)
}

// installHook writes the pre-receive hook, which runs the current
// binary.
func (s *Server) installHook(repo string) error {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# Installed by the sprout agent: deploys pushes of the deploy branch.\nexec")
	for _, a := range s.o.Hook {
		b.WriteString(" '" + strings.ReplaceAll(a, "'", `'\''`) + "'")
	}
	b.WriteString("\n")
	return os.WriteFile(filepath.Join(repo, "hooks", "pre-receive"), []byte(b.String()), 0o755)
}

// flusher sends each write to the client at once.
type flusher struct{ http.ResponseWriter }

func (f *flusher) Write(b []byte) (int, error) {
	n, err := f.ResponseWriter.Write(b)
	http.NewResponseController(f.ResponseWriter).Flush()
	return n, err
}
