package cli

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/platform"
)

func newSetenvCommand(c *cli) *cobra.Command {
	var app, rds string
	var noWait, detach bool
	cmd := &cobra.Command{
		Use:   "setenv KEY=value [KEY= ...]",
		Short: "Set or delete environment properties, rolled out with the same zero-downtime swap",
		Long: `Set environment properties (KEY=value) or delete them (KEY=), as 'eb setenv' does.
When the app is serving, a new container with the new environment must pass
its health check before it takes traffic; if it does not, nothing changes.
The serving version's .platform/confighooks run as on Elastic Beanstalk.

--rds sets the six RDS_* properties Elastic Beanstalk sets for an attached
database (RDS_HOSTNAME, RDS_PORT, RDS_DB_NAME, RDS_USERNAME, RDS_PASSWORD,
RDS_ENGINE); the container then also gets DATABASE_URL built from them,
unless DATABASE_URL is set.`,
		Example: `  sprout setenv --app web LOG_LEVEL=debug SECRET_KEY=s3cret
  sprout setenv --app web OLD_FLAG=          # delete OLD_FLAG
  sprout setenv --app web --rds postgres://app:pass@db.internal:5432/ebdb`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && rds == "" {
				return errors.New("name at least one KEY=value (or KEY= to delete), or give --rds URL")
			}
			set, unset, err := platform.ParseAssignments(args)
			if err != nil {
				return err
			}
			if rds != "" {
				props, err := platform.ParseRDS(rds)
				if err != nil {
					return err
				}
				maps.Copy(set, props)
			}
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			p := newPrinter(c.out)
			f := c.following(cmd, client, p, "setenv", app, detach)
			last, err := f.run(func(ctx context.Context, on func(api.Message)) (*api.Message, error) {
				return client.SetEnv(ctx, app, api.EnvChange{Set: set, Unset: unset, NoWait: noWait}, on)
			}, func(err error) error {
				return fmt.Errorf("environment change of %s failed: %w%s", app, err, stillServing(cmd, client, app))
			})
			if last == nil || err != nil {
				return err
			}
			fmt.Fprintf(c.out, "%s environment of %s updated (%d set, %d deleted)\n", p.elapsed(), app, len(set), len(unset))
			return nil
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "the app (required)")
	cmd.MarkFlagRequired("app")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "fail instead of waiting when a deploy of the app is running")
	detachFlag(cmd, &detach)
	cmd.Flags().StringVar(&rds, "rds", "", "a database URL (postgres://user:password@host:5432/db) to set as the RDS_* properties")
	return cmd
}

func newPrintenvCommand(c *cli) *cobra.Command {
	var app string
	var show bool
	cmd := &cobra.Command{
		Use:   "printenv",
		Short: "Print an app's environment properties (secret-looking values masked)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			env, err := client.Env(cmd.Context(), app, show)
			if err != nil {
				return err
			}
			for _, k := range slices.Sorted(maps.Keys(env.Env)) {
				fmt.Fprintf(c.out, "%s=%s\n", k, env.Env[k])
			}
			if len(env.FromBundle) > 0 {
				fmt.Fprintf(c.err, "(from the bundle's .ebextensions: %s; `sprout setenv` overrides them)\n", strings.Join(env.FromBundle, ", "))
			}
			if len(env.Derived) > 0 {
				fmt.Fprintf(c.err, "(built by Sprout from RDS_*: %s)\n", strings.Join(env.Derived, ", "))
			}
			if len(env.Masked) > 0 {
				fmt.Fprintf(c.err, "(%d secret-looking values masked; --show-secrets prints them)\n", len(env.Masked))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "the app (required)")
	cmd.MarkFlagRequired("app")
	cmd.Flags().BoolVar(&show, "show-secrets", false, "print secret-looking values too")
	return cmd
}
