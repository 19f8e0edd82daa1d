package cli

import (
	"fmt"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/api"
)

func newVersionCommand(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Show the version of this CLI and of the agent it reaches, and how long the agent has run",
		Long: `Show the version of this sprout binary, and of the agent it reaches (on this
host, or the one --host names): its version, process id and uptime. After
'sprout agent upgrade', the agent's version is the new binary's and its uptime
starts again. The CLI's version is shown even when no agent answers.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(c.out, "cli:    sprout %s (%s %s/%s)\n", Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			client, err := c.client(cmd)
			var info api.AgentInfo
			if err == nil {
				info, err = client.Agent(cmd.Context())
			}
			if err != nil {
				fmt.Fprintf(c.out, "agent:  none answers (%v)\n", err)
				return nil
			}
			fmt.Fprintf(c.out, "agent:  %s\n", agentLine(info))
			return nil
		},
	}
}

// agentLine says which agent runs and since when: "sprout v2, pid 1234,
// up 3m12s".
func agentLine(info api.AgentInfo) string {
	return fmt.Sprintf("sprout %s, pid %d, up %s", info.Version, info.PID, uptime(time.Duration(info.UptimeSeconds*float64(time.Second))))
}

// uptime says how long a process has run, briefly.
func uptime(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}
