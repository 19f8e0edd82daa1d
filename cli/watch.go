package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/platform"
	"github.com/sprout-paas/sprout/source"
)

func newWatchCommand(c *cli) *cobra.Command {
	var app string
	var port int
	var stop bool
	cmd := &cobra.Command{
		Use:   "watch MANIFEST",
		Short: "Make an app follow a manifest in S3 (pull mode): the agent deploys what it names",
		Long: `The app follows MANIFEST (s3://bucket/key, written by 'sprout publish'): the
agent polls it with conditional GETs (ETag) every watch.interval and, when it
names another version or environment, deploys it with the same health-gated
swap. A manifest naming a bundle that cannot be fetched or deployed leaves the
serving version serving, and the app's events say why. Apps can also be
declared to follow a manifest in the agent's config (apps:), as a fresh EC2
instance does.`,
		Example: `  sprout watch --app web s3://my-bucket/envs/web/current.json --port 80
  sprout watch --app web --stop`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			manifest := ""
			switch {
			case stop && len(args) > 0:
				return errors.New("give a MANIFEST or --stop, not both")
			case !stop && len(args) == 0:
				return errors.New("name the manifest: s3://bucket/key (or --stop)")
			case !stop:
				manifest = args[0]
				if _, err := source.ParseS3URL(manifest); err != nil {
					return err
				}
			}
			client, err := c.client(cmd)
			if err != nil {
				return err
			}
			if err := client.Watch(cmd.Context(), app, api.WatchRequest{Manifest: manifest, Port: port}); err != nil {
				return err
			}
			if stop {
				fmt.Fprintf(c.out, "%s no longer follows a manifest; it keeps serving what it serves\n", app)
			} else {
				fmt.Fprintf(c.out, "%s follows %s; `sprout status --app %s` and `sprout events --app %s` show what it does\n", app, manifest, app, app)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "the app (required)")
	cmd.MarkFlagRequired("app")
	cmd.Flags().IntVar(&port, "port", 0, "public port of a new app (default: deploy.default_port, or the manifest's)")
	cmd.Flags().BoolVar(&stop, "stop", false, "stop following the manifest")
	return cmd
}

func newPublishCommand(c *cli) *cobra.Command {
	o := &deployOptions{}
	var manifest, bundleRef string
	var envArgs []string
	var port int
	cmd := &cobra.Command{
		Use:   "publish [BUNDLE]",
		Short: "Write the version an app's fleet should serve to its manifest in S3",
		Long: `Write the manifest that agents following it (sprout watch, or apps: in their
config) converge on: the version's label, its bundle, and the app's
environment properties. Give the bundle as --bundle (s3://bucket/key or a git
URL#ref), or as a local BUNDLE with --s3 to upload it as an application
version first (never overwriting one). The environment of the manifest being
replaced is kept, changed by --env KEY=value (KEY= deletes). The manifest is
written only if nobody else wrote it since it was read (an S3 conditional
write); if someone did, it is read and changed again, so that two publishers
at once both land.`,
		Example: `  sprout publish --manifest s3://my-bucket/envs/web/current.json --label v7 --bundle s3://my-bucket/web/v7.zip
  sprout publish app.zip --s3 s3://my-bucket/versions/ --app web --label v8 \
      --manifest s3://my-bucket/envs/web/current.json --env LOG_LEVEL=info`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			mobj, err := source.ParseS3URL(manifest)
			if err != nil {
				return fmt.Errorf("--manifest: %w", err)
			}
			if o.label == "" {
				return errors.New("--label is required: it names the version the fleet serves")
			}
			if err := agent.ValidateLabel(o.label); err != nil {
				return err
			}
			opts, err := s3Options(cmd.Flags())
			if err != nil {
				return err
			}
			s, err := source.NewS3(cmd.Context(), opts)
			if err != nil {
				return err
			}
			switch {
			case len(args) == 1 && bundleRef != "":
				return errors.New("give a BUNDLE with --s3, or --bundle, not both")
			case len(args) == 1:
				if o.s3Prefix == "" {
					return errors.New("a local BUNDLE needs --s3 s3://bucket/prefix/ to upload it to")
				}
				o.bundle = args[0]
				if bundleRef, err = uploadVersion(cmd, c, o); err != nil {
					return err
				}
			case bundleRef == "":
				return errors.New("name the bundle: --bundle s3://bucket/key (or a git URL#ref), or a local BUNDLE with --s3")
			}
			if err := source.Check(bundleRef); err != nil {
				return err
			}
			if strings.HasPrefix(bundleRef, "s3://") {
				obj, _ := source.ParseS3URL(bundleRef)
				if err := s.Exists(cmd.Context(), obj); err != nil {
					return fmt.Errorf("--bundle: %w", err)
				}
			}
			set, unset, err := platform.ParseAssignments(envArgs)
			if err != nil {
				return err
			}
			// Read, change and write the manifest as one compare-and-swap:
			// a publisher who wrote it meanwhile (another property, a
			// label) is read again, not overwritten.
			etag, err := s.Update(cmd.Context(), mobj, "application/json", func(body []byte) ([]byte, error) {
				m := &source.Manifest{App: o.app}
				if old, err := source.ParseManifest(body); err == nil {
					m.Env, m.Port = old.Env, old.Port
					if m.App == "" {
						m.App = old.App
					}
				}
				m.Env = platform.Apply(m.Env, set, unset)
				if err := platform.ValidateEnv(m.Env); err != nil {
					return nil, err
				}
				if len(m.Env) == 0 {
					m.Env = nil
				}
				if port != 0 {
					m.Port = port
				}
				m.Label, m.Bundle = o.label, bundleRef
				return m.Marshal(), nil
			})
			if errors.Is(err, source.ErrPreconditionFailed) {
				return fmt.Errorf("someone else published to %s meanwhile, %d times in a row; %s was not published: try again", mobj, source.UpdateAttempts, o.label)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "published %s (%s) to %s (ETag %s); agents following it deploy it within their watch.interval\n", o.label, source.RedactRef(bundleRef), mobj, etag)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&manifest, "manifest", "", "the manifest, s3://bucket/key (required)")
	cmd.MarkFlagRequired("manifest")
	f.StringVar(&o.label, "label", "", "the version's label (required)")
	f.StringVar(&o.app, "app", "", "the app (recorded in the manifest; agents of other apps refuse it)")
	f.StringVar(&bundleRef, "bundle", "", "the version's bundle: s3://bucket/key, or a git URL#ref")
	f.StringVar(&o.s3Prefix, "s3", "", "with a local BUNDLE: upload it to s3://bucket/prefix/<app>/<label>.<ext> first")
	f.StringArrayVar(&envArgs, "env", nil, "an environment property, KEY=value (KEY= deletes); repeatable")
	f.IntVar(&port, "port", 0, "the app's public port")
	return cmd
}
