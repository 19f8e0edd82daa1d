package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
)

type statusOptions struct {
	env  string
	app  string
	json bool
}

func newStatusCommand(c *cli) *cobra.Command {
	o := &statusOptions{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what an app serves: label, container, port, health, since when",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.env != "" {
				return showEnvironment(cmd, c, o.env, o.app, o.json)
			}
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			var apps []api.AppStatus
			if o.app != "" {
				st, err := client.Status(cmd.Context(), o.app)
				if err != nil {
					return err
				}
				apps = []api.AppStatus{st}
			} else if apps, err = client.Apps(cmd.Context()); err != nil {
				return err
			}
			if o.json {
				return writeJSON(c.out, apps)
			}
			if info, err := client.Agent(cmd.Context()); err == nil {
				fmt.Fprintf(c.out, "agent: %s\n\n", agentLine(info))
			}
			if len(apps) == 0 {
				fmt.Fprintln(c.out, "no apps on this host yet; deploy one with `sprout deploy app.zip`")
			}
			for i, st := range apps {
				if i > 0 {
					fmt.Fprintln(c.out)
				}
				printStatus(c.out, st)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.app, "app", "", "one app (default: every app)")
	cmd.Flags().BoolVar(&o.json, "json", false, "print JSON")
	envFlag(cmd, &o.env)
	return cmd
}

func printStatus(out io.Writer, st api.AppStatus) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	serving := st.Serving
	if serving == "" {
		serving = "nothing yet"
	}
	fmt.Fprintf(tw, "app:\t%s\n", st.Name)
	fmt.Fprintf(tw, "serving:\t%s (since %s)\n", serving, ago(st.ServingSince))
	for i, op := range st.InFlight {
		key := "in flight:"
		if i > 0 {
			key = ""
		}
		fmt.Fprintf(tw, "%s\t%s\n", key, inFlightText(op))
	}
	if len(st.Domains) > 0 {
		fmt.Fprintf(tw, "domains:\t%s (on the shared ports: sprout domains --app %s)\n", strings.Join(st.Domains, ", "), st.Name)
	} else {
		fmt.Fprintf(tw, "port:\t%d\n", st.Port)
	}
	status := st.Status
	if len(st.Causes) > 0 {
		status += ": " + strings.Join(st.Causes, "; ")
	}
	fmt.Fprintf(tw, "health:\t%s (sprout health --app %s)\n", status, st.Name)
	if st.ContainerID != "" {
		fmt.Fprintf(tw, "container:\t%s, %s (%s), started %s, %d restarts\n", shortID(st.ContainerID), st.Container, st.Health, ago(st.StartedAt), st.Restarts)
		fmt.Fprintf(tw, "app listens on:\tcontainer port %d, debug port 127.0.0.1:%d\n", st.ContainerPort, st.HostPort)
	}
	fmt.Fprintf(tw, "proxy targets:\t%v\n", st.Targets)
	if st.Capacity > 1 || len(st.Instances) > 1 || st.Policy != "" {
		policy := st.Policy
		if policy == "" {
			policy = "from the bundle, else AllAtOnce"
		}
		fmt.Fprintf(tw, "instances:\t%d (deployment policy: %s)\n", st.Capacity, policy)
		for _, in := range st.Instances {
			routed := "in the rotation"
			if !in.Routed {
				routed = "out of the rotation"
			}
			check := ""
			switch in.Check {
			case "ok":
				check = ", check ok " + ago(in.CheckedAt)
			case "failing":
				check = ", check failing since " + ago(in.FailingSince)
			}
			fmt.Fprintf(tw, "\t%s  %s  %s  %s  %s, %s, since %s%s\n", in.Name, in.Label, shortID(in.ContainerID), orDash(in.Addr), in.State, routed, ago(in.Since), check)
		}
	}
	h := st.HealthConfig
	check := "TCP connect"
	if h.Path != "" {
		check = "GET " + h.Path
	}
	fmt.Fprintf(tw, "health check:\t%s every %s, %d in a row, timeout %s, grace %s, deadline %s\n", check, h.Interval, h.HealthyThreshold, h.Timeout, h.Grace, h.Deadline)
	fmt.Fprintf(tw, "environment:\t%d properties (sprout printenv --app %s)\n", st.EnvCount, st.Name)
	if f := st.Follows; f != nil {
		fmt.Fprintf(tw, "follows:\t%s (checked %s)\n", f.Manifest, ago(f.CheckedAt))
		if f.Result != "" {
			fmt.Fprintf(tw, "\t%s\n", f.Result)
		}
	}
	tw.Flush()
}

// inFlightText says what an operation in flight is, where it is and
// since when: "deploy of v9, at health since 3s ago (started 12s ago by
// alice@laptop; `sprout abort --app web` stops it)".
func inFlightText(op agent.Operation) string {
	var b strings.Builder
	b.WriteString(op.Kind)
	if op.Label != "" {
		b.WriteString(" of " + op.Label)
	}
	switch {
	case op.Queued:
		b.WriteString(", queued behind the operation above")
	case op.Step != "":
		fmt.Fprintf(&b, ", at %s since %s", op.Step, ago(op.StepSince))
	default:
		b.WriteString(", starting")
	}
	fmt.Fprintf(&b, " (started %s", ago(op.StartedAt))
	if op.By != "" {
		b.WriteString(" by " + op.By)
	}
	if !op.Queued {
		fmt.Fprintf(&b, "; `sprout abort --app %s` stops it", op.App)
	}
	b.WriteString(")")
	return b.String()
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newAppsCommand(c *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "apps",
		Short: "List every app on this host",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			apps, err := client.Apps(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.out, apps)
			}
			tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "APP\tPORT\tSERVING\tHEALTH\tCONTAINER\tSINCE")
			for _, a := range apps {
				port := strconv.Itoa(a.Port)
				if len(a.Domains) > 0 {
					port = "shared" // served by domain
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Name, port, orDash(a.Serving), a.Status, a.Container, ago(a.ServingSince))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(newAppsRmCommand(c))
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newAppsRmCommand(c *cli) *cobra.Command {
	var purge bool
	cmd := &cobra.Command{
		Use:   "rm APP",
		Short: "Remove an app: its container, port, images and history (volumes are kept unless --purge)",
		Long: `Remove an app from this host, as 'eb terminate' or 'dokku apps:destroy' do:
its container stops (after draining), its port closes, and its images, kept
bundles and versions are deleted. Its persistent volumes and logs are kept,
so a new deploy under the same name finds its data again, unless --purge is
given: then they are deleted too, and that cannot be undone.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			p := newPrinter(c.out)
			if _, err := client.RemoveApp(cmd.Context(), args[0], purge, p.on); err != nil {
				return fmt.Errorf("removing %s failed: %w", args[0], err)
			}
			what := "its volumes and logs are kept"
			if purge {
				what = "its volumes and logs are deleted"
			}
			fmt.Fprintf(c.out, "%s %s removed; %s\n", p.elapsed(), args[0], what)
			return nil
		},
	}
	cmd.Flags().BoolVar(&purge, "purge", false, "also delete the app's persistent volumes and kept logs (cannot be undone)")
	return cmd
}
