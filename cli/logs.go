package cli

import (
	"fmt"
	"net/url"

	"github.com/spf13/cobra"
)

func newLogsCommand(c *cli) *cobra.Command {
	var app, label, since string
	var follow, files bool
	var tail int
	cmd := &cobra.Command{
		Use:   "logs",
		Short: "Print an app's container output, live or of an earlier version",
		Long: `Print what the app's container wrote to stdout and stderr: the serving version's
by default, or an earlier version's with --label (kept after its container is
removed, so you can read why it crashed; bounded by container.kept_logs_per_app).`,
		Example: `  sprout logs --app web --follow
  sprout logs --app web --since 10m
  sprout logs --app web --label v3      # why did v3 fail?
  sprout logs --app web --files         # files in the Dockerrun Logging directory`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			q := url.Values{}
			if label != "" {
				q.Set("label", label)
			}
			if since != "" {
				q.Set("since", since)
			}
			if tail > 0 {
				q.Set("tail", fmt.Sprint(tail))
			}
			if follow {
				q.Set("follow", "1")
			}
			if files {
				if follow {
					return fmt.Errorf("--files and --follow cannot be combined; --files prints the log files as they are now")
				}
				q.Set("files", "1")
			}
			return client.Logs(cmd.Context(), app, q, c.out)
		},
	}
	f := cmd.Flags()
	f.StringVar(&app, "app", "", "the app (required)")
	cmd.MarkFlagRequired("app")
	f.StringVar(&label, "label", "", "version (default: the serving one)")
	f.StringVar(&since, "since", "", "only lines written since this long ago (10m) or this time (RFC 3339)")
	f.IntVar(&tail, "tail", 0, "only the last N lines")
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new lines (serving version only)")
	f.BoolVar(&files, "files", false, "print the files the app wrote to its Dockerrun.aws.json Logging directory")
	return cmd
}
