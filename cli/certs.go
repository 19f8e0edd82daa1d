package cli

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/certs"
)

func newCertsCommand(c *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "List the TLS certificates the proxy serves: domains, issuer, expiry, last renewal, errors",
		Long: `List every certificate: yours (sprout certs add, served as they are, wildcards
too) and the ones the agent obtains from an ACME CA for the apps' domains when
tls.acme.email is set (renewed ahead of expiry). A failed issuance shows with
the CA's error and when the next attempt is due; the domain is served over
HTTP meanwhile.`,
		Example: `  sprout certs
  sprout certs add --domain intranet.example --cert c.pem --key k.pem
  sprout certs rm intranet.example`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			list, err := client.Certs(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.out, list)
			}
			printCerts(c.out, list, time.Now())
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(newCertsAddCommand(c), &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove one of your certificates (by the name `sprout certs` lists, or its first domain)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			if err := client.RemoveCert(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(c.out, "certificate %s removed; apps' domains it covered get ACME certificates when tls.acme.email is set\n", certs.NameOf(args[0]))
			return nil
		},
	})
	return cmd
}

// certsAddOptions are `sprout certs add`'s flags.
type certsAddOptions struct {
	domain, cert, key string
}

func newCertsAddCommand(c *cli) *cobra.Command {
	var o certsAddOptions
	cmd := &cobra.Command{
		Use:   "add --domain DOMAIN --cert CERT.pem --key KEY.pem",
		Short: "Serve your own certificate (a wildcard too) instead of an ACME one",
		Long: `Hand the agent a certificate and its private key, in PEM (the certificate file
holds the chain, leaf first). It is served for every name it holds, in
preference to ACME, from now on and after restarts; adding one with the same
first name replaces it (that is how you renew yours). --domain is the name you
mean it for: the command checks that the certificate covers it. The key file
must be readable by its owner only (chmod 600).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := readCertFiles(o)
			if err != nil {
				return err
			}
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			info, err := client.AddCert(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "certificate %s added: serves %s until %s\n", info.Name, strings.Join(info.Domains, ", "), info.NotAfter.Local().Format("2006-01-02 15:04"))
			return nil
		},
	}
	cmd.Flags().StringVar(&o.domain, "domain", "", "the domain it is for (required; checked against the certificate)")
	cmd.Flags().StringVar(&o.cert, "cert", "", "PEM file of the certificate chain, leaf first (required)")
	cmd.Flags().StringVar(&o.key, "key", "", "PEM file of its private key, mode 0600 (required)")
	for _, f := range []string{"domain", "cert", "key"} {
		cmd.MarkFlagRequired(f)
	}
	return cmd
}

// readCertFiles reads what `certs add` sends, refusing a key file others
// can read and a certificate that does not cover the domain.
func readCertFiles(o certsAddOptions) (api.CertRequest, error) {
	key, err := certs.ReadKeyFile(o.key)
	if err != nil {
		return api.CertRequest{}, err
	}
	cert, err := os.ReadFile(o.cert)
	if err != nil {
		return api.CertRequest{}, fmt.Errorf("certificate file: %w", err)
	}
	block, _ := pem.Decode(cert)
	if block == nil || block.Type != "CERTIFICATE" {
		return api.CertRequest{}, fmt.Errorf("%s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", o.cert)
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return api.CertRequest{}, fmt.Errorf("%s: %w", o.cert, err)
	}
	if !slices.ContainsFunc(leaf.DNSNames, func(n string) bool { return strings.EqualFold(n, o.domain) }) && leaf.VerifyHostname(o.domain) != nil {
		return api.CertRequest{}, fmt.Errorf("%s is for %s, not %s: give the certificate for %s (a wildcard covers one label)", o.cert, strings.Join(leaf.DNSNames, ", "), o.domain, o.domain)
	}
	return api.CertRequest{CertPEM: string(cert), KeyPEM: string(key)}, nil
}

// printCerts shows certificates as a table, then each one's error and
// next attempt.
func printCerts(out io.Writer, list []certs.Info, now time.Time) {
	if len(list) == 0 {
		fmt.Fprintln(out, "no certificates: `sprout certs add` brings yours; with tls.acme.email set, apps' domains get ACME ones")
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tDOMAINS\tISSUER\tEXPIRES\tLAST RENEWAL\tSTATUS")
	for _, i := range list {
		issuer := i.Issuer
		switch {
		case i.Managed && issuer == "":
			issuer = "ACME"
		case i.Managed:
			issuer += " (ACME)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", i.Name, strings.Join(i.Domains, ", "), orDash(issuer),
			expiry(i.NotAfter, now), when(i.LastRenewal, now), i.Status)
	}
	tw.Flush()
	printCertProblems(out, list, now)
}

// printCertProblems says, for each certificate with an error, the error
// and when the next attempt is due.
func printCertProblems(out io.Writer, list []certs.Info, now time.Time) {
	for _, i := range list {
		if i.Error == "" {
			continue
		}
		next := ""
		if !i.NextRetry.IsZero() {
			next = fmt.Sprintf("; next attempt %s (in %s)", i.NextRetry.In(now.Location()).Format(time.TimeOnly), i.NextRetry.Sub(now).Round(time.Second))
		}
		fmt.Fprintf(out, "certificate %s %s: %s%s\n", i.Name, i.Status, i.Error, next)
	}
}

// expiry is a certificate's end as a date and how far off it is.
func expiry(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	days := int(t.Sub(now).Hours() / 24)
	switch {
	case t.Before(now):
		return fmt.Sprintf("%s (expired)", t.In(now.Location()).Format(time.DateOnly))
	case days == 0:
		return fmt.Sprintf("%s (in %s)", t.In(now.Location()).Format(time.DateOnly), t.Sub(now).Round(time.Minute))
	}
	return fmt.Sprintf("%s (in %dd)", t.In(now.Location()).Format(time.DateOnly), days)
}

func when(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.In(now.Location()).Format("2006-01-02 15:04")
}
