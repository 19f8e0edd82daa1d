package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/store"
)

func newEventsCommand(c *cli) *cobra.Command {
	var app string
	var limit int
	var follow bool
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
			var last uint64
			print := func(evs []store.Event) {
				for _, e := range evs {
					if e.Seq <= last {
						continue
					}
					last = e.Seq
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05"), e.App, e.Kind, e.Message)
				}
				tw.Flush()
			}
			print(evs)
			for follow {
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(time.Second):
				}
				if evs, err = client.Events(cmd.Context(), app, 200); err != nil {
					if cmd.Context().Err() != nil {
						return nil
					}
					return err
				}
				print(evs)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "one app (default: every app)")
	cmd.Flags().IntVar(&limit, "limit", 50, "how many of the newest events")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events as they happen")
	return cmd
}
