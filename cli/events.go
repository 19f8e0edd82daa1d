package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newEventsCommand(c *cli) *cobra.Command {
	var app string
	var limit int
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show what happened: deploys, failures, rollbacks, restores",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			evs, err := client.Events(cmd.Context(), app, limit)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tAPP\tEVENT\tMESSAGE")
			for _, e := range evs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05"), e.App, e.Kind, e.Message)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "one app (default: every app)")
	cmd.Flags().IntVar(&limit, "limit", 50, "how many of the newest events")
	return cmd
}
