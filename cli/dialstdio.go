package cli

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/transport"
)

func newDialStdioCommand(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "dial-stdio",
		Short: "Join stdin and stdout to this host's agent socket (what `--host ssh://` runs here)",
		Long: `Join stdin and stdout to the agent's socket on this host (--socket,
SPROUT_SOCKET or the config file say where), until the agent closes the
connection or stdin ends. A CLI run with --host ssh://this-host runs it
through ssh and speaks the API over it.

When the socket cannot be opened, it writes one line on stderr that starts
with "` + transport.StdioPrefix + `" and exits with status ` + strconv.Itoa(transport.StdioExit) + `, before
any byte on stdout.`,
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sock, err := socketPath(cmd.Flags())
			if err != nil {
				err = fmt.Errorf("cannot tell where the agent's socket is: %w; make the config file readable by this user (a git.token in it belongs in git.token_file)", err)
				return &exitError{transport.ReportStdio(c.err, err)}
			}
			conn, err := transport.DialForStdio(cmd.Context(), sock)
			if err != nil {
				return &exitError{transport.ReportStdio(c.err, err)}
			}
			return transport.Join(conn, cmd.InOrStdin(), c.out)
		},
	}
}
