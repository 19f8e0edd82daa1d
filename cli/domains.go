package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/api"
)

func newDomainsCommand(c *cli) *cobra.Command {
	var app string
	var asJSON, noWait bool
	cmd := &cobra.Command{
		Use:   "domains",
		Short: "List the domains apps are served by; add or remove one without a deploy",
		Long: `An app with domains is served on the agent's shared HTTP and HTTPS ports
(proxy.http_port, 80, and proxy.https_port, 443), chosen by each request's
Host (and the TLS server name), instead of on a port of its own. A domain is
one app's only. Domains are kept with the app across deploys: 'sprout deploy
--domain' replaces them, 'sprout domains add' and 'rm' change them at once,
without a deploy. An app whose last domain goes is served on its own port
again.

A request for a host no app claims gets 404, or goes to proxy.default_app.
With certificates (HTTPS), plain HTTP requests are redirected to HTTPS (308)
once a certificate covers their host, unless the app was deployed with
--https-redirect=false; --hsts SECONDS adds Strict-Transport-Security.
A wildcard (*.example.com, one label) is served too, but only a certificate
you bring covers it: ACME is never asked for wildcards.`,
		Example: `  sprout domains                          # every app's domains
  sprout domains --app web
  sprout domains add --app web www.example.com example.com
  sprout domains rm --app web example.com`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			list, err := client.Domains(cmd.Context(), app)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.out, list)
			}
			printDomains(c.out, app, list)
			return nil
		},
	}
	cmd.PersistentFlags().StringVar(&app, "app", "", "one app (default: every app; add and rm need it)")
	cmd.PersistentFlags().BoolVar(&noWait, "no-wait", false, "fail instead of waiting when a deploy of the app is running")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	change := func(cmd *cobra.Command, req api.DomainChange) error {
		if app == "" {
			return fmt.Errorf("name the app with --app")
		}
		client, err := c.client(cmd)
		if err != nil {
			return err
		}
		req.NoWait = noWait
		p := newPrinter(c.out)
		if _, err := client.ChangeDomains(cmd.Context(), app, req, p.on); err != nil {
			return fmt.Errorf("domain change of %s failed: %w%s", app, err, stillServing(cmd, client, app))
		}
		list, err := client.Domains(cmd.Context(), app)
		if err != nil {
			return err
		}
		printDomains(c.out, app, list)
		return nil
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "add DOMAIN...",
		Short: "Serve an app by more domains, at once",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return change(cmd, api.DomainChange{Add: args})
		},
	}, &cobra.Command{
		Use:   "rm DOMAIN...",
		Short: "Stop serving an app by some of its domains, at once",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return change(cmd, api.DomainChange{Remove: args})
		},
	})
	return cmd
}

// printDomains prints the domains of one app, or of every app.
func printDomains(out io.Writer, app string, list api.DomainList) {
	if len(list.Domains) == 0 {
		if app == "" {
			fmt.Fprintln(out, "no app has domains; `sprout domains add --app APP DOMAIN` gives one some")
		} else {
			fmt.Fprintf(out, "%s has no domains: it is served on its own port; `sprout domains add --app %s DOMAIN` serves it by domain\n", app, app)
		}
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tDOMAIN\tHTTPS")
	for _, d := range list.Domains {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", d.App, d.Name, httpsText(list.HTTPS, list.ACME, d.Name, d.Certificate, d.Redirect, d.HSTSMaxAge))
	}
	tw.Flush()
	if !list.HTTPS {
		fmt.Fprintln(out, "this agent has no certificates: apps with domains are served on HTTP only")
	}
}

// httpsText says how a domain is served over HTTPS, in a few words.
func httpsText(https, acme bool, name string, cert, redirect bool, hsts int) string {
	switch {
	case !https:
		return "-"
	case !cert && strings.HasPrefix(name, "*."):
		return "no certificate (wildcards need one you bring)"
	case !cert && !acme:
		return "no certificate: HTTP only (set tls.acme.email, or sprout certs add)"
	case !cert:
		return "waiting for its certificate (HTTP until then; sprout certs)"
	}
	var parts []string
	if redirect {
		parts = append(parts, "HTTP redirects here")
	} else {
		parts = append(parts, "HTTP served too")
	}
	if hsts > 0 {
		parts = append(parts, fmt.Sprintf("HSTS %ds", hsts))
	}
	return "yes (" + strings.Join(parts, ", ") + ")"
}
