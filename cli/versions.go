package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newVersionsCommand(c *cli) *cobra.Command {
	var app, label string
	var asJSON, buildLog bool
	cmd := &cobra.Command{
		Use:   "versions",
		Short: "List an app's versions: when deployed, which serves, which failed and why",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			if buildLog {
				if label == "" {
					return fmt.Errorf("--build-log needs --label")
				}
				return client.BuildLog(cmd.Context(), app, label, c.out)
			}
			vs, err := client.Versions(cmd.Context(), app)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.out, vs)
			}
			tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LABEL\tSTATUS\tCREATED\tDEPLOYED\tSOURCE\tIMAGE\tNOTE")
			for _, v := range vs {
				mark := "  "
				if v.Status == "serving" {
					mark = "* "
				}
				image := shortID(trimSha(v.ImageID))
				note := ""
				switch {
				case v.Status == "failed" && v.FailedStep == "":
					note = firstLine(v.Error) // never started: cancelled while queued
				case v.Status == "failed":
					note = fmt.Sprintf("failed at %s: %s", v.FailedStep, firstLine(v.Error))
				case v.ImagePruned:
					image, note = "pruned", "image pruned; redeploy the bundle to serve it"
				}
				src := v.Source
				if v.Commit != "" && !strings.Contains(src, v.Commit[:min(12, len(v.Commit))]) {
					src += " @" + v.Commit[:min(12, len(v.Commit))]
				}
				fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\t%s\t%s\t%s\n", mark, v.Label, v.Status, ago(v.CreatedAt), ago(v.DeployedAt), orDash(src), orDash(image), note)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "the app (required)")
	cmd.MarkFlagRequired("app")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (with each version's full error and step timings)")
	cmd.Flags().StringVar(&label, "label", "", "one version, with --build-log")
	cmd.Flags().BoolVar(&buildLog, "build-log", false, "print the whole output of the version's deploy (build, health checks, result)")
	return cmd
}

func trimSha(id string) string {
	if len(id) > 7 && id[:7] == "sha256:" {
		return id[7:]
	}
	return id
}

func firstLine(s string) string {
	for i, r := range s {
		if r == '\n' {
			return s[:i]
		}
	}
	return s
}
