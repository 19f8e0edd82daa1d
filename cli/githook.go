package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// newGitHookCommand is the pre-receive hook of the agent's git
// repositories: git runs it with the pushed refs on stdin, and sends what
// it prints to the pusher as remote: lines. A non-zero exit rejects the
// push.
func newGitHookCommand(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:    "git-hook",
		Short:  "Deploy a git push (run by git as the pre-receive hook of the agent's repositories)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SilenceUsage = true
			dir, err := filepath.Abs(os.Getenv("GIT_DIR"))
			if err != nil {
				return err
			}
			app := strings.TrimSuffix(filepath.Base(dir), ".git")
			branch := os.Getenv("SPROUT_GIT_BRANCH")
			if branch == "" {
				branch = "main"
			}
			sc := bufio.NewScanner(cmd.InOrStdin())
			failed := false
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) != 3 {
					continue
				}
				newRev, ref := f[1], f[2]
				switch {
				case ref != "refs/heads/"+branch:
					fmt.Fprintf(c.out, "%s is not the deploy branch (%s): kept, not deployed\n", strings.TrimPrefix(ref, "refs/heads/"), branch)
				case strings.Trim(newRev, "0") == "":
					fmt.Fprintf(c.out, "deleting %s does not stop %s; `sprout apps rm %s` does\n", branch, app, app)
				default:
					if err := deployPush(cmd.Context(), cmd, c, app, newRev); err != nil {
						fmt.Fprintf(c.out, "%v\n", err)
						failed = true
					}
				}
			}
			if failed {
				fmt.Fprintln(c.out, "the push is rejected: the branch on the server stays where it was")
				os.Exit(1)
			}
			return sc.Err()
		},
	}
}

// deployPush streams `git archive` of the pushed commit to the agent as
// a bundle and prints the deploy as it happens.
func deployPush(ctx context.Context, cmd *cobra.Command, c *cli, app, rev string) error {
	client, err := c.client(cmd)
	if err != nil {
		return err
	}
	archive := exec.CommandContext(ctx, "git", "archive", "--format=tar", rev)
	pr, pw := io.Pipe()
	archive.Stdout = pw
	var stderr strings.Builder
	archive.Stderr = &stderr
	if err := archive.Start(); err != nil {
		return err
	}
	go func() {
		err := archive.Wait()
		if err != nil {
			err = fmt.Errorf("git archive %s: %v: %s", rev, err, strings.TrimSpace(stderr.String()))
		}
		pw.CloseWithError(err)
	}()
	short := rev[:min(12, len(rev))]
	q := url.Values{"source": {"git push " + short}, "commit": {rev}}
	if err := pushOptions(q); err != nil {
		return err
	}
	p := newPrinter(c.out)
	fmt.Fprintf(c.out, "%s deploying commit %s to app %s\n", p.elapsed(), short, app)
	last, err := client.Deploy(ctx, app, q, pr, p.on)
	pr.Close()
	if err != nil {
		return fmt.Errorf("deploy of %s failed: %w%s", app, err, stillServing(cmd, client, app))
	}
	return p.done(cmd, client, last)
}

// pushOptions reads `git push -o key=value` options into the deploy's
// query: label, and the settings deploy flags set (port=8080,
// health-path=/healthz, ...).
func pushOptions(q url.Values) error {
	n, _ := strconv.Atoi(os.Getenv("GIT_PUSH_OPTION_COUNT"))
	for i := range n {
		opt := os.Getenv(fmt.Sprintf("GIT_PUSH_OPTION_%d", i))
		k, v, ok := strings.Cut(opt, "=")
		param := strings.ReplaceAll(k, "-", "_")
		known := param == "label"
		for _, s := range settingFlags {
			known = known || s.param == param
		}
		if !ok || !known {
			return fmt.Errorf("push option %q: use label=..., port=..., container-port=..., health-path=... (git push -o port=8080)", opt)
		}
		q.Set(param, v)
	}
	return nil
}
