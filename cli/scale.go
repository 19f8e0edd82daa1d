package cli

import (
	"context"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/rollout"
)

type scaleOptions struct {
	app       string
	instances int
	noWait    bool
	detach    bool
}

func newScaleCommand(c *cli) *cobra.Command {
	o := &scaleOptions{}
	cmd := &cobra.Command{
		Use:   "scale --app APP N",
		Short: "Change how many instances of its serving version an app runs, health-gated like a deploy",
		Long: `Change how many instances (containers) of its serving version an app runs,
from 1 to 64, through the same rollout as a deploy, under the app's deployment
policy: the plan is printed first, then each batch as it runs. New instances
must pass their health check before they take traffic; instances that go are
drained before they stop. The count is kept for the app's later deploys only
if the scale succeeds; if a batch fails, or 'sprout abort' stops it, every
instance that served keeps serving and the new ones are removed. A scale runs
no hooks. An app with ProxyServer: none runs 1 instance only.`,
		Example: `  sprout scale --app web 6
  sprout scale --app web 1 --no-wait`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 1 || n > rollout.MaxInstances {
				return fmt.Errorf("N is how many instances the app runs, from 1 to %d, not %q", rollout.MaxInstances, args[0])
			}
			o.instances = n
			return runScale(cmd, c, o)
		},
	}
	cmd.Flags().StringVar(&o.app, "app", "", "the app (required)")
	cmd.MarkFlagRequired("app")
	cmd.Flags().BoolVar(&o.noWait, "no-wait", false, "fail instead of waiting when a deploy of the app is running")
	detachFlag(cmd, &o.detach)
	return cmd
}

func runScale(cmd *cobra.Command, c *cli, o *scaleOptions) error {
	client, err := c.client(cmd)
	if err != nil {
		return err
	}
	p := newPrinter(c.out)
	fmt.Fprintf(c.out, "%s scaling %s to %d instance(s)\n", p.elapsed(), o.app, o.instances)
	req := api.ScaleRequest{Instances: o.instances, NoWait: o.noWait}
	f := c.following(cmd, client, p, "scale", o.app, o.detach)
	f.detail = fmt.Sprintf(" to %d instance(s)", o.instances)
	last, err := f.run(func(ctx context.Context, on func(api.Message)) (*api.Message, error) {
		return client.Scale(ctx, o.app, req, on)
	}, func(err error) error {
		return fmt.Errorf("scale of %s failed: %w%s", o.app, err, runsNow(cmd, client, o.app))
	})
	if last == nil || err != nil {
		return err
	}
	st, err := client.Status(cmd.Context(), o.app)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "%s %s runs %d instance(s) of %s on port %d\n", p.elapsed(), o.app, len(st.Instances), st.Serving, st.Port)
	return nil
}

// runsNow says what an app runs after a failed or aborted scale, for the
// end of its error message.
func runsNow(cmd *cobra.Command, client *api.Client, app string) string {
	st, err := client.Status(cmd.Context(), app)
	if err != nil || st.Serving == "" {
		return ""
	}
	return fmt.Sprintf("\n%s keeps serving %s on %d instance(s)", app, st.Serving, len(st.Instances))
}
