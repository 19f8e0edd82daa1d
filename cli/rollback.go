package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/api"
)

func newRollbackCommand(c *cli) *cobra.Command {
	var app, env string
	var detach bool
	req := api.RollbackRequest{}
	cmd := &cobra.Command{
		Use:   "rollback",
		Short: "Serve an earlier version again, from its kept image, with the same zero-downtime swap",
		Example: `  sprout rollback --app web          # back to the version that served before
  sprout rollback --app web --to v1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if env != "" {
				return rollbackEnvironment(cmd, c, env, app, req.To, detach)
			}
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			p := newPrinter(c.out)
			f := c.following(cmd, client, p, "rollback", app, detach)
			last, err := f.run(func(ctx context.Context, on func(api.Message)) (*api.Message, error) {
				return client.Rollback(ctx, app, req, on)
			}, func(err error) error {
				return fmt.Errorf("rollback of %s failed: %w%s", app, err, stillServing(cmd, client, app))
			})
			if last == nil || err != nil {
				return err
			}
			return p.done(cmd, client, last)
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "the app (required)")
	cmd.MarkFlagRequired("app")
	cmd.Flags().StringVar(&req.To, "to", "", "label to serve (default: the version that served before the current one)")
	cmd.Flags().BoolVar(&req.NoWait, "no-wait", false, "fail instead of waiting when a deploy of the app is running")
	detachFlag(cmd, &detach)
	envFlag(cmd, &env)
	return cmd
}
