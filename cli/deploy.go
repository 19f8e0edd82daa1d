package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/bundle"
	"github.com/sprout-paas/sprout/source"
)

type deployOptions struct {
	bundle string
	app    string
	label  string
	noWait bool
	// detach returns once the agent accepted the deploy.
	detach bool
	// git and ref name a repository commit instead of a bundle;
	// s3Prefix uploads the bundle as an application version first.
	git, ref, s3Prefix string
	// env deploys to an environment (fleet) instead of this host; wait
	// queues behind a rollout in flight; stableFor is how long each host
	// must serve healthy before the next batch starts.
	env                  string
	wait                 bool
	stableFor, lostAfter time.Duration
	// domains, when given, replace the app's domains.
	domains []string
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
	{"instances", "instances", "how many instances (containers) of the app run behind the proxy (default 1)"},
	{"policy", "policy", "deployment policy: AllAtOnce, Rolling, RollingWithAdditionalBatch, Immutable or TrafficSplitting (default: the bundle's .ebextensions, else AllAtOnce)"},
	{"batch-size", "batch_size", "instances per batch of a rolling policy, as a percentage or a count (see --batch-size-type; default 100)"},
	{"batch-size-type", "batch_size_type", "Percentage or Fixed (default Percentage)"},
	{"canary-percent", "canary_percent", "TrafficSplitting: share of requests the new version takes while it is evaluated (default 10)"},
	{"evaluation-time", "evaluation_time", "TrafficSplitting: how long the new version is compared with the old before it takes all traffic (default 5m)"},
	{"https-redirect", "https_redirect", "with domains: redirect plain HTTP to HTTPS (308) once a certificate covers the host (default true; --https-redirect=false serves HTTP too)"},
	{"hsts", "hsts", "with domains: send Strict-Transport-Security with this max-age in seconds on HTTPS (default 0: none; 31536000 is a year)"},
}

func newDeployCommand(c *cli) *cobra.Command {
	o := &deployOptions{}
	cmd := &cobra.Command{
		Use:   "deploy BUNDLE | s3://bucket/key | GIT-URL#ref",
		Short: "Deploy a new version of an app from a bundle, an S3 object or a git commit",
		Long: `Deploy a bundle: a .zip, .tar.gz/.tgz or a directory with a Dockerfile or a
Dockerrun.aws.json at its root. The agent builds it, starts it, waits until it
is healthy, then swaps traffic to it with no dropped requests. If anything
fails, the version that was serving keeps serving.

An s3://bucket/key or a git URL (https://host/repo.git#ref, or --git URL
--ref REF) is fetched by the agent itself: only the reference is sent.
--s3 s3://bucket/prefix/ uploads a local bundle first, as an application
version that is never overwritten, then deploys it from there.

Settings given as flags (--port, --health-path, ...) are kept for the app's
later deploys. --domain (repeated, or comma-separated) serves the app by those
host names on the agent's shared HTTP and HTTPS ports instead of a port of its
own, and replaces its domains (see 'sprout domains').

Once the agent has the bundle, the deploy is the agent's: it runs to its end
whatever happens to this command. Ctrl-C (or a lost connection) stops
following it and says how to watch it (sprout events --app APP --follow) and
how to stop it (sprout abort --app APP); Ctrl-C during the upload changes
nothing. --detach returns as soon as the agent has accepted the deploy.

With --env s3://bucket/prefix/, the bundle goes to every host of that
environment instead (no access to the hosts needed): it is uploaded as an
application version, and its rollout goes in health-gated batches of hosts
(--policy, --batch-size and --batch-size-type count hosts; each host applies
the app's own policy to its own instances). The command shows each batch and
host, and exits 0 once every host serves the version, or 1 once a failed
batch was rolled back everywhere, naming the host and the reason.
Interrupting it leaves the rollout running. See docs/fleet.md.`,
		Example: `  sprout deploy app.zip --app web --label v2 --port 8080
  sprout deploy app.zip --app web --detach  # returns once the agent accepted it
  sprout deploy app.zip --app web --domain www.example.com --domain example.com
                                         # served by domain on the shared ports 80 and 443
  sprout deploy ./myapp --health-path /healthz
  sprout deploy app.zip --app web --instances 4 --policy Rolling --batch-size 25
                                         # 4 instances, replaced one at a time
  sprout deploy app.zip --app web --policy TrafficSplitting --canary-percent 10 --evaluation-time 2m
  sprout deploy s3://my-bucket/web/v7.zip --app web --label v7      # the agent fetches it
  sprout deploy app.zip --app web --label v8 --s3 s3://my-bucket/versions/
                                         # upload as an application version, then deploy it
  sprout deploy https://git.example.com/team/web.git#main --app web  # shallow clone of that ref
  sprout deploy --git https://git.example.com/team/web.git --ref v1.4.2 --app web
  sprout deploy app.zip --env s3://my-bucket/envs/prod/ --app web --label v8 --policy Rolling --batch-size 25
                                         # every host of the environment, 25% of the hosts at a time`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case o.git != "" && len(args) > 0:
				return errors.New("give either a BUNDLE or --git, not both")
			case o.git != "":
				o.bundle = o.git
				if o.ref != "" {
					o.bundle += "#" + o.ref
				}
			case len(args) == 0:
				return errors.New("name a bundle: a .zip, .tar.gz, directory, s3://bucket/key or git URL (or --git URL)")
			case o.ref != "":
				return errors.New("--ref goes with --git")
			default:
				o.bundle = args[0]
			}
			q := url.Values{}
			for _, s := range settingFlags {
				if f := cmd.Flags().Lookup(s.flag); f.Changed {
					q.Set(s.param, f.Value.String())
				}
			}
			if cmd.Flags().Changed("domain") {
				q.Set("domain", strings.Join(o.domains, ","))
			}
			if o.env != "" {
				return runFleetDeploy(cmd, c, o, q)
			}
			if o.wait || o.stableFor != 0 || o.lostAfter != 0 {
				return errors.New("--wait, --stable-for and --lost-after go with --env")
			}
			return runDeploy(cmd, c, o, q)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.app, "app", "", "app name (default: the bundle's base name)")
	f.StringVar(&o.label, "label", "", "version label (default: v<N>)")
	f.BoolVar(&o.noWait, "no-wait", false, "fail instead of waiting when another deploy of the app is running")
	detachFlag(cmd, &o.detach)
	f.StringVar(&o.git, "git", "", "deploy a commit of this git repository (the agent clones it shallowly)")
	f.StringVar(&o.ref, "ref", "", "with --git: the branch, tag or commit (default: the remote's HEAD)")
	f.StringVar(&o.s3Prefix, "s3", "", "upload the bundle to s3://bucket/prefix/<app>/<label>.<ext> first (never overwriting), then deploy it from there")
	for _, s := range settingFlags {
		f.String(s.flag, "", s.usage)
	}
	f.Lookup("https-redirect").NoOptDefVal = "true"
	f.StringArrayVar(&o.domains, "domain", nil, "serve the app by this host name on the shared HTTP/HTTPS ports instead of its own port (repeat it, or separate with commas; replaces the app's domains, kept for later deploys)")
	envFlag(cmd, &o.env)
	f.BoolVar(&o.wait, "wait", false, "with --env: wait for a rollout in flight to end instead of being refused")
	f.DurationVar(&o.stableFor, "stable-for", 0, "with --env: how long each host serves the version healthy before the next batch starts (default 2s)")
	f.DurationVar(&o.lostAfter, "lost-after", 0, "with --env: how long a host may stop reporting before the rollout leaves it out (default 30s)")
	return cmd
}

func runDeploy(cmd *cobra.Command, c *cli, o *deployOptions, q url.Values) error {
	if o.label != "" {
		q.Set("label", o.label)
	}
	if o.noWait {
		q.Set("no_wait", "1")
	}
	if source.IsRemote(o.bundle) {
		if o.s3Prefix != "" {
			return errors.New("--s3 uploads a local bundle; this one is already remote")
		}
		return deployRemote(cmd, c, o, q, o.bundle)
	}
	if o.s3Prefix != "" {
		ref, err := uploadVersion(cmd, c, o)
		if err != nil {
			return err
		}
		return deployRemote(cmd, c, o, q, ref)
	}
	st, err := os.Stat(o.bundle)
	if err != nil {
		return fmt.Errorf("bundle %s: %w", o.bundle, err)
	}
	app := o.app
	if app == "" {
		app = appNameFromPath(o.bundle)
	}
	q.Set("source", filepath.Base(o.bundle))
	var body io.Reader
	size := int64(-1)
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
		body, size = f, st.Size()
	}
	client, err := c.client(cmd)
	if err != nil {
		return err
	}
	p := newPrinter(c.out)
	fmt.Fprintf(c.out, "%s deploying %s to app %s\n", p.elapsed(), o.bundle, app)
	f := c.following(cmd, client, p, "deploy", app, o.detach)
	body = f.upload(p.upload(body, size))
	last, err := f.run(func(ctx context.Context, on func(api.Message)) (*api.Message, error) {
		return client.Deploy(ctx, app, q, body, on)
	}, deployFailed(cmd, client, app))
	if last == nil || err != nil {
		return err
	}
	return p.done(cmd, client, last)
}

// deployFailed says that a deploy of app failed, and what serves.
func deployFailed(cmd *cobra.Command, client *api.Client, app string) func(error) error {
	return func(err error) error {
		return fmt.Errorf("deploy of %s failed: %w%s", app, err, stillServing(cmd, client, app))
	}
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

// deployRemote asks the agent to fetch ref (s3:// or git) and deploy it;
// only the reference crosses the socket.
func deployRemote(cmd *cobra.Command, c *cli, o *deployOptions, q url.Values, ref string) error {
	if err := source.Check(ref); err != nil {
		return err
	}
	if o.app == "" {
		return fmt.Errorf("name the app with --app when deploying %s", source.RedactRef(ref))
	}
	q.Set("from", ref)
	client, err := c.client(cmd)
	if err != nil {
		return err
	}
	p := newPrinter(c.out)
	fmt.Fprintf(c.out, "%s deploying %s to app %s\n", p.elapsed(), source.RedactRef(ref), o.app)
	f := c.following(cmd, client, p, "deploy", o.app, o.detach)
	last, err := f.run(func(ctx context.Context, on func(api.Message)) (*api.Message, error) {
		return client.Deploy(ctx, o.app, q, nil, on)
	}, deployFailed(cmd, client, o.app))
	if last == nil || err != nil {
		return err
	}
	return p.done(cmd, client, last)
}

// uploadVersion packs (when needed) and uploads the bundle to
// s3://bucket/prefix/<app>/<label>.<ext>, as Elastic Beanstalk keeps
// application versions, never replacing one, and returns its URL.
func uploadVersion(cmd *cobra.Command, c *cli, o *deployOptions) (string, error) {
	if o.label == "" {
		return "", errors.New("--s3 needs --label: the label names the application version in S3")
	}
	if o.app == "" {
		o.app = appNameFromPath(o.bundle)
	}
	prefix, err := source.ParseS3URL(o.s3Prefix)
	if err != nil {
		return "", fmt.Errorf("--s3: %w", err)
	}
	st, err := os.Stat(o.bundle)
	if err != nil {
		return "", fmt.Errorf("bundle %s: %w", o.bundle, err)
	}
	path, ext := o.bundle, bundleExt(o.bundle)
	if st.IsDir() {
		tmp, err := os.CreateTemp("", "sprout-bundle-*.tar.gz")
		if err != nil {
			return "", err
		}
		defer os.Remove(tmp.Name())
		if err := bundle.Pack(o.bundle, tmp); err != nil {
			tmp.Close()
			return "", err
		}
		tmp.Close()
		path, ext = tmp.Name(), ".tar.gz"
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	info, _ := f.Stat()
	key := strings.Trim(prefix.Key, "/")
	if key != "" {
		key += "/"
	}
	obj := source.Object{Bucket: prefix.Bucket, Key: key + o.app + "/" + o.label + ext}
	opts, err := s3Options(cmd.Flags())
	if err != nil {
		return "", err
	}
	s, err := source.NewS3(cmd.Context(), opts)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(c.out, "uploading %s (%d bytes) to %s\n", o.bundle, info.Size(), obj)
	etag, err := s.PutNew(cmd.Context(), obj, f, info.Size())
	if err != nil {
		return "", err
	}
	fmt.Fprintf(c.out, "uploaded application version %s (ETag %s)\n", obj, etag)
	return obj.String(), nil
}

func bundleExt(p string) string {
	for _, ext := range []string{".tar.gz", ".tgz", ".zip", ".tar"} {
		if strings.HasSuffix(p, ext) {
			return ext
		}
	}
	return ".zip"
}
