// Package cli is the sprout command line: one file per command, each with
// an options struct, a constructor for its cobra command and a run
// function. Only this package reads configuration (through viper).
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/api"
)

// Version is the binary's version, set at build time.
var Version = "dev"

// cli is what every command reaches the outside world through.
type cli struct {
	out, err io.Writer
	root     *cobra.Command
}

// client returns an API client for the agent the flags point at: on
// another host with --host / SPROUT_HOST, else on this one's socket.
func (c *cli) client(cmd *cobra.Command) (*api.Client, error) {
	d, err := agentDialer(cmd.Flags())
	if err != nil {
		return nil, err
	}
	return api.NewClientWith(d), nil
}

// NewRootCommand builds the sprout command tree.
func NewRootCommand(out, errOut io.Writer) *cobra.Command {
	c := &cli{out: out, err: errOut}
	root := &cobra.Command{
		Use:   "sprout",
		Short: "Sprout deploys web apps on your own hosts with zero-downtime swaps",
		Long: `Sprout builds an application bundle (a Dockerfile or a Dockerrun.aws.json) on this
host's Docker engine, runs it behind its own reverse proxy, and replaces versions
with health-checked, zero-downtime swaps that roll back by themselves.

Run 'sprout agent' on the host, then 'sprout deploy app.zip'.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       Version,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	pf := root.PersistentFlags()
	pf.String("socket", "", "the agent's unix socket (env SPROUT_SOCKET; default /run/sprout/sprout.sock)")
	pf.StringP("host", "H", "", "reach the agent of another host: ssh://[user@]host[:port] (env SPROUT_HOST; ssh command: SPROUT_SSH_COMMAND)")
	pf.String("config", "", "agent config file (env SPROUT_CONFIG; default /etc/sprout/agent.yaml when it exists)")
	c.root = root
	root.AddCommand(
		newAgentCommand(c),
		newDeployCommand(c),
		newStatusCommand(c),
		newAppsCommand(c),
		newVersionsCommand(c),
		newRollbackCommand(c),
		newSetenvCommand(c),
		newScaleCommand(c),
		newAbortCommand(c),
		newPrintenvCommand(c),
		newEventsCommand(c),
		newLogsCommand(c),
		newHealthCommand(c),
		newVolumesCommand(c),
		newCertsCommand(c),
		newDomainsCommand(c),
		newGitHookCommand(c),
		newWatchCommand(c),
		newPublishCommand(c),
		newDialStdioCommand(c),
		newVersionCommand(c),
	)
	return root
}

// Execute runs the CLI and returns the process exit code.
func Execute() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := NewRootCommand(os.Stdout, os.Stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		if ee := (*exitError)(nil); errors.As(err, &ee) {
			return ee.code
		}
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	return 0
}

// exitError ends the process with code, the command having said why.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }
