package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/agent"
)

type abortOptions struct {
	env string
	app string
}

func newAbortCommand(c *cli) *cobra.Command {
	o := &abortOptions{}
	cmd := &cobra.Command{
		Use:   "abort --app APP",
		Short: "Stop an app's deploy, rollback, setenv or scale in flight and cancel those queued; every instance goes back to the version that was serving",
		Long: `Stop the deploy, rollback, setenv or scale of an app that is running, as
'eb abort' does, and put every instance back on the version that was serving:
the instances the rollout stopped start again (the same containers) and take
traffic once healthy, and the ones it started are drained and removed. The
command returns once that is done. The stopped rollout fails with "aborted",
and a stopped deploy's version is recorded as failed.

Abort also cancels every operation queued on the app: none of them starts,
each is named ("cancelled the queued rollback to v7 (started by bob@laptop)"),
the CLI that follows one fails with "cancelled by 'sprout abort' while it was
queued", and a cancelled deploy's version is recorded as failed with that.

An operation runs on the agent to its end whatever happens to the CLI that
started it (Ctrl-C, a dropped ssh session, a cancelled CI job, --detach):
abort is the way to stop it.

With nothing running or queued, abort says so and exits 0, so that it is safe
to run whenever a rollout must not go on. A rollout whose new instances already
serve every request is finishing and cannot be aborted: abort exits 1 and says
how to go back once it is done (the operations queued behind it are cancelled
all the same).

With --env s3://bucket/prefix/, it stops the app's rollout across that
environment: every host that moved returns to the last good version by
itself, and the command follows them until the rollout is rolled back.`,
		Example: `  sprout abort --app web
  sprout abort --app web --env s3://my-bucket/envs/prod/`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.env != "" {
				return abortEnvironment(cmd, c, o.env, o.app, true)
			}
			return runAbort(cmd, c, o)
		},
	}
	cmd.Flags().StringVar(&o.app, "app", "", "the app (required)")
	envFlag(cmd, &o.env)
	cmd.MarkFlagRequired("app")
	return cmd
}

func runAbort(cmd *cobra.Command, c *cli, o *abortOptions) error {
	client, err := c.client(cmd)
	if err != nil {
		return err
	}
	client.By = whoShort()
	res, err := client.Abort(cmd.Context(), o.app)
	if err != nil {
		return fmt.Errorf("abort of %s: %w", o.app, err)
	}
	switch {
	case res.Aborted != "":
		fmt.Fprintf(c.out, "aborted the %s of %s: %s serves on %d instance(s)\n", res.Aborted, o.app, orDash(res.Serving), res.Instances)
	case len(res.Cancelled) > 0:
		fmt.Fprintf(c.out, "nothing of %s was running: %s serves on %d instance(s)\n", o.app, orDash(res.Serving), res.Instances)
	default:
		fmt.Fprintf(c.out, "nothing to abort: no deploy, rollback, setenv or scale of %s is running or queued\n", o.app)
	}
	for _, op := range res.Cancelled {
		fmt.Fprintf(c.out, "cancelled the queued %s (%s)\n", op.Name(), startedText(op))
	}
	return nil
}

// startedText says who started an operation, or when: "started by
// bob@laptop".
func startedText(op agent.Operation) string {
	if op.By != "" {
		return "started by " + op.By
	}
	return "started " + ago(op.StartedAt)
}
