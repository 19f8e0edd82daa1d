package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"os/user"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/bundle"
	"github.com/sprout-paas/sprout/fleet"
	"github.com/sprout-paas/sprout/rollout"
	"github.com/sprout-paas/sprout/source"
)

// openEnvironment opens the environment at url (s3://bucket/prefix/) and
// proves that its store honours conditional writes, as writer.
func openEnvironment(ctx context.Context, opts source.S3Options, url, writer string) (*fleet.Store, error) {
	s3, err := source.NewS3(ctx, opts)
	if err != nil {
		return nil, err
	}
	st, err := fleet.Open(s3, url)
	if err != nil {
		return nil, err
	}
	if err := st.Probe(ctx, writer); err != nil {
		return nil, fmt.Errorf("environment %s: %w", url, err)
	}
	return st, nil
}

// joinEnvironment opens the agent's environment, refusing a store that
// does not honour conditional writes, and says who this host is in it.
func joinEnvironment(ctx context.Context, cfg *AgentConfig) (*fleet.Store, agent.EnvironmentHost, error) {
	host := agent.EnvironmentHost{ID: cfg.HostID, Version: Version, Address: cfg.Proxy.BindAddress}
	if host.ID == "" {
		name, err := os.Hostname()
		if err != nil {
			return nil, host, fmt.Errorf("config host_id: empty, and the hostname cannot be read (%v): set host_id", err)
		}
		host.ID = name
		if err := fleet.ValidateHostID(name); err != nil {
			return nil, host, fmt.Errorf("config host_id: empty, and the hostname %q is not a host id (%v): set host_id", name, err)
		}
	}
	if host.Address == "" || net.ParseIP(host.Address).IsUnspecified() {
		host.Address = host.ID
	}
	st, err := openEnvironment(ctx, cfg.S3, cfg.Environment, "host-"+host.ID)
	if err != nil {
		return nil, host, fmt.Errorf("config environment: %w", err)
	}
	return st, host, nil
}

// envFlag adds --env to a command that can work on an environment.
func envFlag(cmd *cobra.Command, env *string) {
	cmd.Flags().StringVar(env, "env", "", "work on the environment (fleet) at s3://bucket/prefix/ instead of this host's agent")
}

// cliEnvironment opens the environment a CLI command names.
func cliEnvironment(cmd *cobra.Command, url string) (*fleet.Store, error) {
	opts, err := s3Options(cmd.Flags())
	if err != nil {
		return nil, err
	}
	return openEnvironment(cmd.Context(), opts, url, "cli-"+notWriter.ReplaceAllString(whoShort(), "-"))
}

// notWriter is what may not be in a probe writer's name.
var notWriter = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// who says who runs the CLI: user@host (sprout version).
func who() string {
	return fmt.Sprintf("%s (sprout %s)", whoShort(), Version)
}

func whoShort() string {
	name := "someone"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

var errRolledBack = errors.New("the rollout did not finish")

// fleetPolicyParams are the deploy flags that, with --env, say how the
// rollout goes across hosts; the others are the app's own settings on
// each host.
var fleetPolicyParams = []string{"policy", "batch_size", "batch_size_type", "canary_percent", "evaluation_time"}

// fleetSettings reads the rollout's settings across hosts from the deploy
// flags.
func fleetSettings(q url.Values, stableFor, lostAfter time.Duration) (fleet.Settings, error) {
	s := fleet.DefaultSettings()
	var err error
	if v := q.Get("policy"); v != "" {
		if s.Policy, err = rollout.ParsePolicy(v); err != nil {
			return s, fmt.Errorf("--policy: %w", err)
		}
	}
	if v := q.Get("batch_size_type"); v != "" {
		if s.BatchSizeType, err = rollout.ParseBatchSizeType(v); err != nil {
			return s, fmt.Errorf("--batch-size-type: %w", err)
		}
	}
	for _, f := range []struct {
		param string
		dst   *int
	}{{"batch_size", &s.BatchSize}, {"canary_percent", &s.NewVersionPercent}} {
		if v := q.Get(f.param); v != "" {
			if *f.dst, err = strconv.Atoi(v); err != nil {
				return s, fmt.Errorf("--%s %q is not a whole number", strings.ReplaceAll(f.param, "_", "-"), v)
			}
		}
	}
	if v := q.Get("evaluation_time"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return s, fmt.Errorf("--evaluation-time %q is not a duration like 2m", v)
		}
		s.EvaluationTime = fleet.Duration(d)
	}
	if stableFor > 0 {
		s.StableFor = fleet.Duration(stableFor)
	}
	if lostAfter > 0 {
		s.LostAfter = fleet.Duration(lostAfter)
	}
	return s, s.Validate()
}

// runFleetDeploy uploads the bundle as an application version of the
// environment, publishes its rollout, and shows it batch by batch and host
// by host until every host serves it (exit 0) or it is rolled back (exit
// 1). Interrupting it leaves the rollout running.
func runFleetDeploy(cmd *cobra.Command, c *cli, o *deployOptions, q url.Values) error {
	ctx := cmd.Context()
	if source.IsRemote(o.bundle) {
		return errors.New("--env deploys a local bundle (a .zip, .tar.gz or directory): it is uploaded to the environment as an application version")
	}
	if o.app == "" {
		o.app = appNameFromPath(o.bundle)
	}
	if o.label == "" {
		o.label = "v" + time.Now().UTC().Format("20060102-150405")
	}
	settings, err := fleetSettings(q, o.stableFor, o.lostAfter)
	if err != nil {
		return err
	}
	st, err := cliEnvironment(cmd, o.env)
	if err != nil {
		return err
	}
	path, cleanup, err := packedBundle(o.bundle)
	if err != nil {
		return err
	}
	defer cleanup()
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "uploading %s (%d bytes) as version %s of %s\n", o.bundle, info.Size(), o.label, o.app)
	rel, err := st.PutVersion(ctx, o.app, o.label, f, info.Size())
	if err != nil {
		if errors.Is(err, source.ErrPreconditionFailed) {
			return fmt.Errorf("the environment already has a version %s of %s (versions are never overwritten): choose another --label", o.label, o.app)
		}
		return err
	}
	fmt.Fprintf(c.out, "uploaded %s (sha256 %s)\n", rel.Bundle, rel.SHA256[:16])
	rel.Settings = map[string]string{}
	for k, v := range q {
		if k == "port" {
			if rel.Port, err = strconv.Atoi(v[0]); err != nil {
				return fmt.Errorf("--port %q is not a port", v[0])
			}
			continue
		}
		if !slices.Contains(fleetPolicyParams, k) {
			rel.Settings[k] = v[0]
		}
	}
	// The app's settings are kept from deploy to deploy, as on one host:
	// what this deploy does not set comes from the last good release.
	if cur, _, err := st.Rollout(ctx); err == nil && cur != nil {
		if good, ok := cur.Good[o.app]; ok {
			if rel.Port == 0 {
				rel.Port = good.Port
			}
			for k, v := range good.Settings {
				if _, ok := rel.Settings[k]; !ok {
					rel.Settings[k] = v
				}
			}
			if rel.Env == nil {
				rel.Env = good.Env
			}
		}
	}
	var r *fleet.Rollout
	for {
		r, err = st.Publish(ctx, fleet.Request{Release: rel, Settings: settings, By: who()})
		var busy *fleet.BusyError
		if !errors.As(err, &busy) || !o.wait {
			break
		}
		fmt.Fprintf(c.out, "waiting: %v\n", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	if err != nil {
		return err
	}
	p := newPrinter(c.out)
	fmt.Fprintf(c.out, "%s published rollout %s to %s: %s, %d batch(es) of hosts\n", p.elapsed(), r.ID, st.URL(), r.Settings.Policy, len(r.Batches))
	if o.detach {
		fmt.Fprintf(c.out, "the hosts carry it out by themselves\n%s\n", rolloutHints(st, o.app))
		return nil
	}
	return followRollout(ctx, c, st, r.ID, p)
}

// rolloutHints says how to watch an environment's rollout of app and how
// to stop it.
func rolloutHints(st *fleet.Store, app string) string {
	return fmt.Sprintf("  watch it: sprout status --env %s\n  stop it:  sprout abort --app %s --env %s", st.URL(), app, st.URL())
}

// followRollout prints the rollout id as it changes until it ends. Ctrl-C
// stops the following, not the rollout, as with one host's operations.
func followRollout(ctx context.Context, c *cli, st *fleet.Store, id string, p *printer) error {
	last, canary, app := "", "", ""
	for {
		r, _, err := st.Rollout(ctx)
		if err == nil && r != nil && r.ID == id {
			app = r.Release.App
		}
		switch {
		case ctx.Err() != nil:
			fmt.Fprintf(c.err, "\nstopped following: rollout %s goes on across %s\n%s\n", id, st.URL(), rolloutHints(st, cmp.Or(app, "APP")))
			return &exitError{exitInterrupted}
		case err != nil:
			fmt.Fprintf(c.err, "%s cannot read the rollout (%v); retrying\n", p.elapsed(), err)
		case r == nil || r.ID != id:
			return fmt.Errorf("rollout %s is no longer the environment's current one: `sprout status --env %s`", id, st.URL())
		default:
			if now := r.Progress(); now != last {
				last = now
				fmt.Fprintf(c.out, "%s %s\n", p.elapsed(), now)
			}
			if r.Canary != "" && r.Canary != canary {
				canary = r.Canary
				fmt.Fprintf(c.out, "%s canary: %s\n", p.elapsed(), canary)
			}
			switch r.State {
			case fleet.StateSucceeded:
				fmt.Fprintf(c.out, "%s %s %s serves on every host of %s\n", p.elapsed(), r.Release.App, r.Release.Label, st.URL())
				return nil
			case fleet.StateRolledBack, fleet.StateFailed:
				where := ""
				if r.FailedHost != "" {
					where = " (host " + r.FailedHost + ")"
				}
				good := "nothing: there was no good version to return to"
				if g, ok := r.Good[r.Release.App]; ok {
					good = g.Label
				}
				return fmt.Errorf("%w: %s %s was %s%s: %s; the hosts serve %s", errRolledBack, r.Release.App, r.Release.Label, r.State, where, r.Reason, good)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// packedBundle is the bundle as an archive file: a directory is packed
// into a temporary one, which cleanup removes.
func packedBundle(path string) (string, func(), error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	if !st.IsDir() {
		return path, func() {}, nil
	}
	tmp, err := os.CreateTemp("", "sprout-bundle-*.tar.gz")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.Remove(tmp.Name()) }
	if err := bundle.Pack(path, tmp); err != nil {
		tmp.Close()
		cleanup()
		return "", nil, err
	}
	if err := tmp.Close(); err != nil {
		cleanup()
		return "", nil, err
	}
	return tmp.Name(), cleanup, nil
}

// showEnvironment prints the environment's rollout and every host.
func showEnvironment(cmd *cobra.Command, c *cli, url, app string, asJSON bool) error {
	ctx := cmd.Context()
	st, err := cliEnvironment(cmd, url)
	if err != nil {
		return err
	}
	r, _, err := st.Rollout(ctx)
	if err != nil {
		return err
	}
	reports, unreadable, err := st.Reports(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(c.out, map[string]any{"rollout": r, "hosts": reports, "unreadable": unreadable})
	}
	w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	defer w.Flush()
	if r == nil {
		fmt.Fprintf(w, "environment %s: no rollout yet\n", url)
	} else {
		fmt.Fprintf(w, "environment %s\nrollout %s by %s: %s\n", url, r.ID, r.By, r.Progress())
		if r.Canary != "" {
			fmt.Fprintf(w, "canary: %s\n", r.Canary)
		}
		for _, name := range slices.Sorted(maps.Keys(r.Good)) {
			fmt.Fprintf(w, "last good %s: %s\n", name, r.Good[name].Label)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "HOST\tADDRESS\tREPORTED\tIN ROLLOUT\tAPP\tSERVING\tPHASE\tTARGET\tREQUESTS\t5XX\tP99\tERROR")
	for _, id := range slices.Sorted(maps.Keys(reports)) {
		h := reports[id]
		inRollout := "-"
		if r != nil {
			if hs, ok := r.Hosts[id]; ok {
				inRollout = string(hs.State)
				if hs.Reason != "" && hs.State == fleet.HostLost {
					inRollout += " (" + hs.Reason + ")"
				}
			}
		}
		age := time.Since(h.ReportedAt).Round(time.Second).String() + " ago"
		names := slices.Sorted(maps.Keys(h.Apps))
		if len(names) == 0 {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t-\t-\t-\t-\t-\t-\t-\t\n", id, h.Address, age, inRollout)
		}
		for _, name := range names {
			if app != "" && name != app {
				continue
			}
			a := h.Apps[name]
			reqs, errs5, p99 := "-", "-", "-"
			if t := a.Traffic; t != nil {
				reqs, errs5 = strconv.FormatInt(t.Stats.Requests, 10), strconv.FormatInt(t.Stats.Classes[4], 10)
				p99 = t.Stats.P99.Round(time.Millisecond).String()
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, h.Address, age, inRollout, name, dash(a.Serving), a.Phase, dash(a.Target), reqs, errs5, p99, a.Error)
		}
	}
	for _, u := range unreadable {
		fmt.Fprintf(w, "unreadable report: %s\n", u)
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// abortEnvironment stops app's rollout in the environment: every host that
// moved returns to the last good version by itself.
func abortEnvironment(cmd *cobra.Command, c *cli, url, app string, follow bool) error {
	st, err := cliEnvironment(cmd, url)
	if err != nil {
		return err
	}
	r, err := st.Abort(cmd.Context(), app, who())
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "aborted rollout %s: %s\n", r.ID, r.Progress())
	if !follow {
		return nil
	}
	err = followRollout(cmd.Context(), c, st, r.ID, newPrinter(c.out))
	if errors.Is(err, errRolledBack) {
		fmt.Fprintln(c.out, err)
		return nil // what was asked
	}
	return err
}

// rollbackEnvironment rolls app back across the environment to label (by
// default the good version before the current one), as a new rollout of
// that release.
func rollbackEnvironment(cmd *cobra.Command, c *cli, url, app, label string, detach bool) error {
	ctx := cmd.Context()
	st, err := cliEnvironment(cmd, url)
	if err != nil {
		return err
	}
	cur, _, err := st.Rollout(ctx)
	if err != nil {
		return err
	}
	current := ""
	if cur != nil {
		if g, ok := cur.Good[app]; ok {
			current = g.Label
		}
	}
	history, err := st.History(ctx)
	if err != nil {
		return err
	}
	var rel *fleet.Release
	for i := len(history) - 1; i >= 0; i-- {
		h := history[i]
		if h.Release.App != app || h.State != fleet.StateSucceeded {
			continue
		}
		if label != "" && h.Release.Label == label || label == "" && h.Release.Label != current {
			rel = &h.Release
			break
		}
	}
	if rel == nil {
		if label != "" {
			return fmt.Errorf("no rollout of %s %s succeeded in %s: name a version that every host served (`sprout status --env %s`)", app, label, url, url)
		}
		return fmt.Errorf("%s has no good version in %s before %s: nothing to roll back to", app, url, current)
	}
	r, err := st.Publish(ctx, fleet.Request{Release: *rel, Settings: fleet.DefaultSettings(), By: who() + ", rollback"})
	if err != nil {
		return err
	}
	p := newPrinter(c.out)
	fmt.Fprintf(c.out, "%s rolling %s back to %s on every host (rollout %s)\n", p.elapsed(), app, rel.Label, r.ID)
	if detach {
		fmt.Fprintf(c.out, "the hosts carry it out by themselves\n%s\n", rolloutHints(st, app))
		return nil
	}
	return followRollout(ctx, c, st, r.ID, p)
}
