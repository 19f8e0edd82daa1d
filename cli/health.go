package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/docker/go-units"
	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/agent"
)

func newHealthCommand(c *cli) *cobra.Command {
	var app, env string
	var watch, asJSON bool
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Show each app's health, like `eb health`: status, causes, requests, latency, container",
		Long: `Show each app's enhanced health: a status (Ok, Info, Warning, Degraded, Severe,
Pending, NoData) with its causes in words, computed from the proxy's requests
over the last minutes, the serving container's health checks and its state
(see the README for the rules), with request rate, status-class shares,
latency percentiles, container uptime, restarts, CPU and memory. Below the
table: certificates whose issuance or renewal failed, with the CA's error
(sprout certs has them all).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if env != "" {
				return showEnvironment(cmd, c, env, app, asJSON)
			}
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			for {
				reports, err := client.Health(cmd.Context(), app)
				if err != nil {
					if cmd.Context().Err() != nil {
						return nil
					}
					return err
				}
				if asJSON {
					return writeJSON(c.out, reports)
				}
				if watch {
					fmt.Fprint(c.out, "\033[H\033[2J") // home and clear, as watch(1) does
					fmt.Fprintf(c.out, "sprout health, every 2s (Ctrl-C to stop)   %s\n\n", time.Now().Format("15:04:05"))
				}
				printHealth(c.out, reports)
				if list, err := client.Certs(cmd.Context()); err == nil && app == "" {
					printCertProblems(c.out, list, time.Now())
				}
				if !watch {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(2 * time.Second):
				}
			}
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "one app (default: every app)")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "refresh in place every 2 seconds")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	envFlag(cmd, &env)
	return cmd
}

func printHealth(out io.Writer, reports []agent.Report) {
	if len(reports) == 0 {
		fmt.Fprintln(out, "no apps on this host yet")
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tSTATUS\tVERSION\tREQ/S\t2xx\t3xx\t4xx\t5xx\tP50\tP90\tP99\tUPTIME\tRESTARTS\tCPU\tMEM")
	for _, r := range reports {
		st := r.Stats
		pct := func(class int) string {
			if st.Requests == 0 {
				return "-"
			}
			return fmt.Sprintf("%.1f%%", st.Share(class)*100)
		}
		ms := func(d time.Duration) string {
			if st.Requests == 0 {
				return "-"
			}
			return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
		}
		uptime := "-"
		if r.Uptime > 0 {
			uptime = r.Uptime.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%.1f%%\t%s\n",
			r.App, r.Status, orDash(r.Serving), r.RateRPS, pct(2), pct(3), pct(4), pct(5), ms(st.P50), ms(st.P90), ms(st.P99),
			uptime, r.Restarts, r.CPU*100, units.BytesSize(float64(r.Memory)))
	}
	tw.Flush()
	for _, r := range reports {
		if len(r.Instances) > 1 {
			fmt.Fprintf(out, "%s: restarts, CPU and memory are the total of %d instances:\n", r.App, len(r.Instances))
			for _, in := range r.Instances {
				rotation := "in the rotation"
				if !in.InRotation {
					rotation = "out of the rotation"
				}
				check := "not checked yet"
				switch {
				case in.LastCheck.Err != "":
					check = "check failing since " + in.FailingSince.Format(time.TimeOnly) + ": " + in.LastCheck.Err
				case !in.LastCheck.At.IsZero():
					check = "check ok at " + in.LastCheck.At.Format(time.TimeOnly)
				}
				fmt.Fprintf(out, "  %s  %s  %s  %s, %s, %d restarts, CPU %.1f%%, MEM %s, %s\n", in.Name, in.Label, in.State, in.Status,
					rotation, in.Restarts, in.CPU*100, units.BytesSize(float64(in.Memory)), check)
			}
		}
		if len(r.Causes) > 0 {
			fmt.Fprintf(out, "%s %s: %s\n", r.App, r.Status, strings.Join(r.Causes, "; "))
		}
	}
}
