package cli

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/bundle"
)

type deployOptions struct {
	bundle string
	app    string
	label  string
	noWait bool
}

// settingFlags maps deploy flags to the API's query parameters.
var settingFlags = []struct{ flag, param, usage string }{
	{"port", "port", "public port the proxy serves the app on (first deploy: default 80; later: changes it)"},
	{"container-port", "container_port", "port the app listens on inside the container (default: the Dockerfile's first EXPOSE or Dockerrun's Ports)"},
	{"health-path", "health_path", "HTTP path that must answer 2xx/3xx before traffic moves (default: TCP connect)"},
	{"health-interval", "health_interval", "time between health checks (default 500ms)"},
	{"health-timeout", "health_timeout", "timeout of one health check (default 2s)"},
	{"healthy-threshold", "healthy_threshold", "consecutive passing checks needed (default 2)"},
	{"health-grace", "health_grace", "time after start before the first check, for slow boots (default 0s)"},
	{"health-deadline", "health_deadline", "give up when not healthy within this time (default 5m)"},
}

func newDeployCommand(c *cli) *cobra.Command {
	o := &deployOptions{}
	cmd := &cobra.Command{
		Use:   "deploy BUNDLE",
		Short: "Deploy a new version of an app from a .zip, .tar.gz or directory",
		Long: `Deploy a bundle: a .zip, .tar.gz/.tgz or a directory with a Dockerfile or a
Dockerrun.aws.json at its root. The agent builds it, starts it, waits until it
is healthy, then swaps traffic to it with no dropped requests. If anything
fails, the version that was serving keeps serving.

Settings given as flags (--port, --health-path, ...) are kept for the app's
later deploys.`,
		Example: `  sprout deploy app.zip --app web --label v2 --port 8080
  sprout deploy ./myapp --health-path /healthz`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.bundle = args[0]
			q := url.Values{}
			for _, s := range settingFlags {
				if f := cmd.Flags().Lookup(s.flag); f.Changed {
					q.Set(s.param, f.Value.String())
				}
			}
			return runDeploy(cmd, c, o, q)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.app, "app", "", "app name (default: the bundle's base name)")
	f.StringVar(&o.label, "label", "", "version label (default: v<N>)")
	f.BoolVar(&o.noWait, "no-wait", false, "fail instead of waiting when another deploy of the app is running")
	for _, s := range settingFlags {
		f.String(s.flag, "", s.usage)
	}
	return cmd
}

func runDeploy(cmd *cobra.Command, c *cli, o *deployOptions, q url.Values) error {
	st, err := os.Stat(o.bundle)
	if err != nil {
		return fmt.Errorf("bundle %s: %w", o.bundle, err)
	}
	app := o.app
	if app == "" {
		app = appNameFromPath(o.bundle)
	}
	q.Set("source", filepath.Base(o.bundle))
	if o.label != "" {
		q.Set("label", o.label)
	}
	if o.noWait {
		q.Set("no_wait", "1")
	}
	var body io.Reader
	if st.IsDir() {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(bundle.Pack(o.bundle, pw)) }()
		defer pr.Close()
		body = pr
	} else {
		f, err := os.Open(o.bundle)
		if err != nil {
			return err
		}
		defer f.Close()
		body = f
	}
	client, err := c.client(cmd)
	if err != nil {
		return err
	}
	p := newPrinter(c.out)
	fmt.Fprintf(c.out, "%s deploying %s to app %s\n", p.elapsed(), o.bundle, app)
	last, err := client.Deploy(cmd.Context(), app, q, body, p.on)
	if err != nil {
		return fmt.Errorf("deploy of %s failed: %w%s", app, err, stillServing(cmd, client, app))
	}
	return p.done(cmd, client, last)
}

var notName = regexp.MustCompile(`[^a-z0-9]+`)

// appNameFromPath derives an app name from a bundle's file or folder name.
func appNameFromPath(p string) string {
	base := filepath.Base(filepath.Clean(p))
	for _, ext := range []string{".tar.gz", ".tgz", ".zip", ".tar"} {
		base = strings.TrimSuffix(base, ext)
	}
	name := strings.Trim(notName.ReplaceAllString(strings.ToLower(base), "-"), "-")
	if name == "" {
		return "app"
	}
	return name
}
