package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/store"
)

func newVolumesCommand(c *cli) *cobra.Command {
	var app string
	var asJSON, noWait bool
	cmd := &cobra.Command{
		Use:   "volumes",
		Short: "List an app's persistent volumes; add or remove one",
		Long: `An app's data lives in named volumes that survive every deploy, rollback and
agent restart. A volume comes from 'sprout volumes add', or from a VOLUME in
the app's image (named after its path: VOLUME /data is volume "data").
Dockerrun.aws.json Volumes (host directories) and its Logging directory are
listed too. The agent deletes a volume's data only on 'sprout apps rm --purge'.`,
		Example: `  sprout volumes --app web
  sprout volumes add --app web uploads:/srv/uploads
  sprout volumes rm --app web uploads      # unmounted; the data is kept`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			vols, err := client.Volumes(cmd.Context(), app)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.out, vols)
			}
			if len(vols) == 0 {
				fmt.Fprintf(c.out, "%s has no volumes; `sprout volumes add --app %s NAME:/path` declares one\n", app, app)
				return nil
			}
			tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tMOUNTED AT\tFROM\tON THE HOST")
			for _, v := range vols {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Name, orDash(v.Path), v.From, orDash(v.HostPath))
			}
			return tw.Flush()
		},
	}
	cmd.PersistentFlags().StringVar(&app, "app", "", "the app (required)")
	cmd.MarkPersistentFlagRequired("app")
	cmd.PersistentFlags().BoolVar(&noWait, "no-wait", false, "fail instead of waiting when a deploy of the app is running")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	change := func(cmd *cobra.Command, req api.VolumeChange, done string) error {
		client, err := c.client(cmd)
		if err != nil {
			return err
		}
		req.NoWait = noWait
		p := newPrinter(c.out)
		f := c.following(cmd, client, p, "volume change", app, false)
		last, err := f.run(func(ctx context.Context, on func(api.Message)) (*api.Message, error) {
			return client.ChangeVolumes(ctx, app, req, on)
		}, func(err error) error {
			return fmt.Errorf("volume change of %s failed: %w%s", app, err, stillServing(cmd, client, app))
		})
		if last == nil || err != nil {
			return err
		}
		fmt.Fprintf(c.out, "%s %s\n", p.elapsed(), done)
		return nil
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "add NAME:/container/path",
		Short: "Declare a persistent volume and roll it out with the zero-downtime swap",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, path, ok := strings.Cut(args[0], ":")
			if !ok || name == "" || path == "" {
				return fmt.Errorf("%q is not NAME:/container/path (for example data:/var/lib/app)", args[0])
			}
			return change(cmd, api.VolumeChange{Add: &store.Volume{Name: name, Path: path}}, fmt.Sprintf("volume %s is mounted at %s in %s", name, path, app))
		},
	}, &cobra.Command{
		Use:   "rm NAME",
		Short: "Stop mounting a volume (its data is kept until `sprout apps rm --purge`)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return change(cmd, api.VolumeChange{Remove: args[0]}, fmt.Sprintf("volume %s is no longer mounted in %s; its data is kept", args[0], app))
		},
	})
	return cmd
}
