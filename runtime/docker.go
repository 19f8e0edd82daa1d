// Package runtime builds images and runs application containers on the
// host's Docker engine, through the official Docker Go client. Every
// container and image it makes carries labels that say which agent and app
// own it, so that an agent can find its own again after a restart.
package runtime

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/docker/go-connections/nat"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"

	"github.com/sprout-paas/sprout/bundle"
)

// Labels Sprout puts on what it creates.
const (
	LabelAgent = "io.sprout.agent"
	LabelApp   = "io.sprout.app"
	LabelLabel = "io.sprout.label"
)

// ErrNoEngine means the Docker engine could not be reached.
var ErrNoEngine = errors.New("cannot reach the Docker engine")

// ErrBuildFailed means the engine reported an error while building.
var ErrBuildFailed = errors.New("image build failed")

// ErrImageMissing means an image is neither on the host nor pullable.
var ErrImageMissing = errors.New("image not available")

// Docker is a connection to one Docker engine.
type Docker struct {
	c *client.Client
	// PullTimeout bounds one image pull; 5 minutes when zero.
	PullTimeout time.Duration
}

// New connects to the engine named by DOCKER_HOST (or the default socket)
// and checks that it answers.
func New(ctx context.Context) (*Docker, error) {
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoEngine, err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Ping(pctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w at %s: %v (start it with scripts/ensure-docker.sh, or `systemctl start docker`)", ErrNoEngine, c.DaemonHost(), err)
	}
	return &Docker{c: c}, nil
}

// Close releases the connection.
func (d *Docker) Close() error { return d.c.Close() }

// Build builds the image for the context in dir, tags it and returns its
// ID. The engine's output is written to out as it comes. The Dockerfile's
// .dockerignore is honoured.
//
// A build whose cached step's image vanished under it (removed by the
// pruning of an old version, of this app or another, that shares the
// layer) is built once more: the engine reports it as "unable to find
// image", and the second build no longer finds that cache entry.
func (d *Docker) Build(ctx context.Context, dir, tag string, labels map[string]string, out io.Writer) (string, error) {
	id, err := d.build(ctx, dir, tag, labels, out)
	if err != nil && ctx.Err() == nil && strings.Contains(err.Error(), "unable to find image") {
		fmt.Fprintf(out, "the engine lost a cached image during the build (%v); building again\n", err)
		id, err = d.build(ctx, dir, tag, labels, out)
	}
	return id, err
}

// build is one build of Build.
func (d *Docker) build(ctx context.Context, dir, tag string, labels map[string]string, out io.Writer) (string, error) {
	skip, err := dockerignore(dir)
	if err != nil {
		return "", err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(bundle.WriteTar(dir, pw, skip)) }()
	defer pr.Close()

	resp, err := d.c.ImageBuild(ctx, pr, build.ImageBuildOptions{
		Tags:        []string{tag},
		Labels:      labels,
		Dockerfile:  "Dockerfile",
		Remove:      true,
		ForceRemove: true,
	})
	if err != nil {
		return "", buildError(ctx, err)
	}
	defer resp.Body.Close()
	if err := jsonmessage.DisplayJSONMessagesStream(resp.Body, out, 0, false, nil); err != nil {
		var jerr *jsonmessage.JSONError
		if errors.As(err, &jerr) {
			return "", fmt.Errorf("%w: %s", ErrBuildFailed, strings.TrimSpace(jerr.Message))
		}
		return "", buildError(ctx, err)
	}
	info, err := d.Image(ctx, tag)
	if err != nil {
		return "", err
	}
	return info.ID, nil
}

// buildError says why a build failed; a build stopped by its context (a
// deploy's Timeout, a cancel) says that, and wraps the context's error.
func buildError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w: stopped: %w", ErrBuildFailed, context.Cause(ctx))
	}
	return fmt.Errorf("%w: %v", ErrBuildFailed, err)
}

// dockerignore reads dir/.dockerignore into a skip function for the build
// context. The Dockerfile and .dockerignore are always sent, as docker does.
func dockerignore(dir string) (func(string, bool) bool, error) {
	f, err := os.Open(filepath.Join(dir, ".dockerignore"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf(".dockerignore: %w", err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, fmt.Errorf(".dockerignore: %w", err)
	}
	return func(rel string, isDir bool) bool {
		if rel == "Dockerfile" || rel == ".dockerignore" {
			return false
		}
		skip, err := pm.MatchesOrParentMatches(rel)
		// A directory with exclusions inside must still be walked.
		if isDir && pm.Exclusions() {
			return false
		}
		return err == nil && skip
	}, nil
}

// ImageInfo is what Sprout needs to know about an image.
type ImageInfo struct {
	ID string
	// ExposedPort is the lowest TCP port the image exposes, or 0.
	ExposedPort int
	// HasHealthcheck is true when the image declares a HEALTHCHECK.
	HasHealthcheck bool
	// Volumes are the container paths the image declares with VOLUME,
	// sorted.
	Volumes []string
	// Labels are the image's labels; Sprout's builds carry LabelAgent.
	Labels map[string]string
}

// Image inspects an image by reference or ID.
func (d *Docker) Image(ctx context.Context, ref string) (ImageInfo, error) {
	ins, err := d.c.ImageInspect(ctx, ref)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return ImageInfo{}, fmt.Errorf("%w: %s is not on this host", ErrImageMissing, ref)
		}
		return ImageInfo{}, err
	}
	info := ImageInfo{ID: ins.ID}
	if ins.Config != nil {
		for p := range ins.Config.ExposedPorts {
			port, proto, _ := strings.Cut(p, "/")
			n, err := strconv.Atoi(port)
			if err == nil && (proto == "" || proto == "tcp") && (info.ExposedPort == 0 || n < info.ExposedPort) {
				info.ExposedPort = n
			}
		}
		hc := ins.Config.Healthcheck
		info.HasHealthcheck = hc != nil && len(hc.Test) > 0 && hc.Test[0] != "NONE"
		info.Volumes = slices.Sorted(maps.Keys(ins.Config.Volumes))
		info.Labels = ins.Config.Labels
	}
	return info, nil
}

// EnsureImage makes ref available on the host. With update it pulls ref
// first, as Dockerrun's Image.Update asks, and falls back to a local image
// when no registry answers; without, it uses a local image when there is
// one and pulls only when there is none. out hears which.
func (d *Docker) EnsureImage(ctx context.Context, ref string, update bool, out io.Writer) error {
	local, lerr := d.Image(ctx, ref)
	if lerr == nil && !update {
		fmt.Fprintf(out, "using the local image %s (%s); Image.Update is false, so it is not pulled\n", ref, shortID(local.ID))
		return nil
	}
	if lerr == nil {
		fmt.Fprintf(out, "pulling %s (Image.Update); the local image %s is the fallback\n", ref, shortID(local.ID))
	} else {
		fmt.Fprintf(out, "image %s is not on this host; pulling it\n", ref)
	}
	pctx, cancel := context.WithTimeout(ctx, d.pullTimeout())
	defer cancel()
	rc, err := d.c.ImagePull(pctx, ref, image.PullOptions{})
	if err == nil {
		err = jsonmessage.DisplayJSONMessagesStream(rc, out, 0, false, nil)
		rc.Close()
	}
	switch {
	case err == nil:
		now, ierr := d.Image(ctx, ref)
		if ierr != nil {
			return ierr
		}
		if lerr == nil && now.ID == local.ID {
			fmt.Fprintf(out, "pulled %s: the local image was already the newest\n", ref)
		} else {
			fmt.Fprintf(out, "pulled %s (%s)\n", ref, shortID(now.ID))
		}
		return nil
	case lerr == nil && ctx.Err() == nil:
		fmt.Fprintf(out, "could not pull %s (%s); using the local image %s instead\n", ref, firstLine(err.Error()), shortID(local.ID))
		return nil
	}
	return fmt.Errorf("%w: %s is not on this host and could not be pulled: %v (build or `docker load` it on the host, or fix the name)", ErrImageMissing, ref, err)
}

// pullTimeout bounds one pull.
func (d *Docker) pullTimeout() time.Duration {
	if d.PullTimeout > 0 {
		return d.PullTimeout
	}
	return 5 * time.Minute
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	return id[:min(12, len(id))]
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// Tag gives an image another name.
func (d *Docker) Tag(ctx context.Context, src, dst string) error {
	return d.c.ImageTag(ctx, src, dst)
}

// RemoveImage removes an image reference; a missing one is not an error.
func (d *Docker) RemoveImage(ctx context.Context, ref string) error {
	_, err := d.c.ImageRemove(ctx, ref, image.RemoveOptions{PruneChildren: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return err
	}
	return nil
}

// ContainerSpec says how to run one application container.
type ContainerSpec struct {
	Name          string
	Image         string
	Env           []string
	ContainerPort int
	Labels        map[string]string
	// StopGrace is how long the app gets between SIGTERM and SIGKILL.
	StopGrace time.Duration
	// LogMaxSize and LogMaxFiles bound the json-file log ("10m", "3").
	LogMaxSize  string
	LogMaxFiles string
	// Entrypoint and Cmd replace the image's when set.
	Entrypoint []string
	Cmd        []string
	// Mounts are named volumes and host directories.
	Mounts []Mount
	// PublicPort, when set, publishes the container's port straight on
	// this host port of PublicIP ("" for every address) instead of a
	// random loopback port: Elastic Beanstalk's ProxyServer none.
	PublicPort int
	PublicIP   string
}

// Mount puts a named volume (Volume set) or a host directory (HostDir
// set) at Target in the container.
type Mount struct {
	Volume  string
	HostDir string
	Target  string
}

// Container is a running (or adopted) application container.
type Container struct {
	ID     string
	Name   string
	Image  string
	Labels map[string]string
	// Addr is where the proxy and health checks reach the app: the
	// container's bridge address and port, which skips docker-proxy.
	Addr string
	// HostPort is the loopback port the engine published for the app.
	HostPort int
	Running  bool
	Created  time.Time
}

// Run creates and starts a container. On any failure it leaves nothing
// behind.
func (d *Docker) Run(ctx context.Context, spec ContainerSpec) (*Container, error) {
	port := nat.Port(fmt.Sprintf("%d/tcp", spec.ContainerPort))
	grace := int(spec.StopGrace.Seconds())
	cfg := &container.Config{
		Image:        spec.Image,
		Env:          spec.Env,
		Labels:       spec.Labels,
		ExposedPorts: nat.PortSet{port: {}},
		StopTimeout:  &grace,
		Entrypoint:   spec.Entrypoint,
		Cmd:          spec.Cmd,
	}
	logCfg := map[string]string{"max-size": cmp.Or(spec.LogMaxSize, "10m"), "max-file": cmp.Or(spec.LogMaxFiles, "3")}
	hc := &container.HostConfig{
		PortBindings: nat.PortMap{port: {{HostIP: "127.0.0.1", HostPort: ""}}},
		// No restart until KeepRunning: a crash while the app is being
		// checked must show as an exit, with its code.
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
		LogConfig:     container.LogConfig{Type: "json-file", Config: logCfg},
	}
	if spec.PublicPort != 0 {
		hc.PortBindings = nat.PortMap{port: {{HostIP: spec.PublicIP, HostPort: strconv.Itoa(spec.PublicPort)}}}
	}
	for _, m := range spec.Mounts {
		if m.Volume != "" {
			hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeVolume, Source: m.Volume, Target: m.Target})
		} else {
			hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeBind, Source: m.HostDir, Target: m.Target})
		}
	}
	created, err := d.c.ContainerCreate(ctx, cfg, hc, nil, nil, spec.Name)
	if err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	if err := d.c.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		d.Remove(context.WithoutCancel(ctx), created.ID)
		return nil, fmt.Errorf("start container: %w", err)
	}
	c, err := d.Container(ctx, created.ID)
	if err != nil {
		d.Remove(context.WithoutCancel(ctx), created.ID)
		return nil, err
	}
	return c, nil
}

// KeepRunning makes the engine restart the container whenever it stops,
// unless Sprout stops it, including after a reboot of the host.
func (d *Docker) KeepRunning(ctx context.Context, id string) error {
	_, err := d.c.ContainerUpdate(ctx, id, container.UpdateConfig{
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped},
	})
	if err != nil {
		return fmt.Errorf("set the restart policy: %w", err)
	}
	return nil
}

// Container inspects one container and says where its app listens.
func (d *Docker) Container(ctx context.Context, id string) (*Container, error) {
	ins, err := d.c.ContainerInspect(ctx, id)
	if err != nil {
		return nil, err
	}
	c := &Container{ID: ins.ID, Name: strings.TrimPrefix(ins.Name, "/")}
	if ins.Config != nil {
		c.Image, c.Labels = ins.Config.Image, ins.Config.Labels
	}
	c.Created, _ = time.Parse(time.RFC3339Nano, ins.Created)
	if ins.State != nil {
		c.Running = ins.State.Running
	}
	c.Addr, c.HostPort = addrOf(ins)
	return c, nil
}

// addrOf says where an inspected container's app listens: its bridge
// address and TCP port (skipping docker-proxy), else the address the
// engine published the port on; and the host port the engine published.
// A stopped container has neither.
func addrOf(ins container.InspectResponse) (addr string, hostPort int) {
	if ins.NetworkSettings == nil {
		return "", 0
	}
	port, ok := appPort(ins)
	if !ok {
		return "", 0
	}
	hostIP := "127.0.0.1"
	for _, b := range ins.NetworkSettings.Ports[port] {
		if n, err := strconv.Atoi(b.HostPort); err == nil && n > 0 {
			hostPort = n
			if ip := net.ParseIP(b.HostIP); ip != nil && !ip.IsUnspecified() {
				hostIP = b.HostIP
			}
			break
		}
	}
	// The default bridge first; Sprout starts containers on no other.
	var ip string
	if n := ins.NetworkSettings.Networks["bridge"]; n != nil {
		ip = n.IPAddress
	}
	for _, n := range ins.NetworkSettings.Networks {
		if ip == "" && n != nil {
			ip = n.IPAddress
		}
	}
	switch {
	case ip != "":
		addr = net.JoinHostPort(ip, port.Port())
	case hostPort != 0:
		addr = net.JoinHostPort(hostIP, strconv.Itoa(hostPort))
	}
	return addr, hostPort
}

// appPort is the container's port that Sprout published: the one port
// its host config binds, else the one the engine lists with bindings. The
// engine also lists, with no bindings, the ports the image EXPOSEs.
func appPort(ins container.InspectResponse) (nat.Port, bool) {
	if ins.ContainerJSONBase != nil && ins.HostConfig != nil {
		for p := range ins.HostConfig.PortBindings {
			if p.Proto() == "tcp" {
				return p, true
			}
		}
	}
	for p, bindings := range ins.NetworkSettings.Ports {
		if p.Proto() == "tcp" && len(bindings) > 0 {
			return p, true
		}
	}
	return "", false
}

// State is a container's life as the engine sees it.
type State struct {
	Running      bool
	Restarting   bool
	ExitCode     int
	OOMKilled    bool
	RestartCount int
	// Health is the Docker HEALTHCHECK status ("starting", "healthy",
	// "unhealthy"), or "" when the image has none.
	Health    string
	StartedAt time.Time
	Error     string
	// Addr is where the app listens and HostPort the port the engine
	// published, as Container says.
	Addr     string
	HostPort int
}

// State inspects a container's state.
func (d *Docker) State(ctx context.Context, id string) (State, error) {
	ins, err := d.c.ContainerInspect(ctx, id)
	if err != nil {
		return State{}, err
	}
	s := State{RestartCount: ins.RestartCount}
	s.Addr, s.HostPort = addrOf(ins)
	if st := ins.State; st != nil {
		s.Running, s.Restarting, s.ExitCode, s.OOMKilled, s.Error = st.Running, st.Restarting, st.ExitCode, st.OOMKilled, st.Error
		s.StartedAt, _ = time.Parse(time.RFC3339Nano, st.StartedAt)
		if st.Health != nil {
			s.Health = string(st.Health.Status)
		}
	}
	return s, nil
}

// Logs returns the last tail lines the container wrote to stdout and stderr.
func (d *Docker) Logs(ctx context.Context, id string, tail int) (string, error) {
	rc, err := d.c.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(tail)})
	if err != nil {
		return "", err
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := stdcopy.StdCopy(&buf, &buf, io.LimitReader(rc, 1<<20)); err != nil {
		return buf.String(), err
	}
	return buf.String(), nil
}

// LogOptions select what LogStream returns.
type LogOptions struct {
	Follow     bool
	Since      time.Time // zero: from the start
	Tail       int       // 0: everything
	Timestamps bool
}

// LogStream returns the container's stdout and stderr, demultiplexed, as
// they were written, following new lines when asked. Close it to stop.
func (d *Docker) LogStream(ctx context.Context, id string, o LogOptions) (io.ReadCloser, error) {
	opts := container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: o.Follow, Timestamps: o.Timestamps}
	if !o.Since.IsZero() {
		opts.Since = strconv.FormatInt(o.Since.Unix(), 10)
	}
	if o.Tail > 0 {
		opts.Tail = strconv.Itoa(o.Tail)
	}
	rc, err := d.c.ContainerLogs(ctx, id, opts)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := stdcopy.StdCopy(pw, pw, rc)
		rc.Close()
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// Restart stops (SIGTERM, then SIGKILL after grace) and starts a container.
func (d *Docker) Restart(ctx context.Context, id string, grace time.Duration) error {
	secs := int(grace.Seconds())
	return d.c.ContainerRestart(ctx, id, container.StopOptions{Timeout: &secs})
}

// Usage is a sample of a container's resource use.
type Usage struct {
	// CPU and System are cumulative nanoseconds of the container's and the
	// host's CPU time; CPUs is the number of online CPUs.
	CPU, System uint64
	CPUs        uint32
	Memory      uint64
}

// Usage samples a container's CPU and memory use once.
func (d *Docker) Usage(ctx context.Context, id string) (Usage, error) {
	r, err := d.c.ContainerStatsOneShot(ctx, id)
	if err != nil {
		return Usage{}, err
	}
	defer r.Body.Close()
	var st container.StatsResponse
	if err := json.NewDecoder(r.Body).Decode(&st); err != nil {
		return Usage{}, err
	}
	return usageOf(st), nil
}

// usageOf reads a stats sample as docker stats does. Engines before API
// 1.27 leave online_cpus out (count the per-CPU usages then), and the page
// cache to leave out of memory is total_inactive_file under cgroup v1,
// inactive_file under v2.
func usageOf(st container.StatsResponse) Usage {
	u := Usage{CPU: st.CPUStats.CPUUsage.TotalUsage, System: st.CPUStats.SystemUsage, CPUs: st.CPUStats.OnlineCPUs, Memory: st.MemoryStats.Usage}
	if u.CPUs == 0 {
		u.CPUs = uint32(len(st.CPUStats.CPUUsage.PercpuUsage))
	}
	cache, v1 := st.MemoryStats.Stats["total_inactive_file"]
	if !v1 {
		cache = st.MemoryStats.Stats["inactive_file"]
	}
	if cache < u.Memory {
		u.Memory -= cache
	}
	return u
}

// Stop sends SIGTERM and, after grace, SIGKILL. A container that is
// already gone counts as stopped.
func (d *Docker) Stop(ctx context.Context, id string, grace time.Duration) error {
	secs := int(grace.Seconds())
	err := d.c.ContainerStop(ctx, id, container.StopOptions{Timeout: &secs})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return err
	}
	return nil
}

// Remove force-removes a container and its anonymous volumes. A container
// that is already gone counts as removed.
func (d *Docker) Remove(ctx context.Context, id string) error {
	err := d.c.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !cerrdefs.IsNotFound(err) && !strings.Contains(err.Error(), "is already in progress") {
		return err
	}
	return nil
}

// List returns every container, running or not, that carries all the given
// labels.
func (d *Docker) List(ctx context.Context, labels map[string]string) ([]*Container, error) {
	list, err := d.c.ContainerList(ctx, container.ListOptions{All: true, Filters: labelFilter(labels)})
	if err != nil {
		return nil, err
	}
	out := make([]*Container, 0, len(list))
	for _, s := range list {
		c, err := d.Container(ctx, s.ID)
		if cerrdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Volume is a named volume the engine keeps on the host.
type Volume struct {
	Name       string
	Labels     map[string]string
	Mountpoint string
	CreatedAt  time.Time
}

// EnsureVolume creates the named volume, with labels, unless it exists.
func (d *Docker) EnsureVolume(ctx context.Context, name string, labels map[string]string) error {
	if _, err := d.c.VolumeInspect(ctx, name); err == nil {
		return nil
	}
	if _, err := d.c.VolumeCreate(ctx, volume.CreateOptions{Name: name, Labels: labels}); err != nil {
		return fmt.Errorf("create volume %s: %w", name, err)
	}
	return nil
}

// Volumes lists the named volumes that carry every one of labels.
func (d *Docker) Volumes(ctx context.Context, labels map[string]string) ([]Volume, error) {
	list, err := d.c.VolumeList(ctx, volume.ListOptions{Filters: labelFilter(labels)})
	if err != nil {
		return nil, err
	}
	out := make([]Volume, 0, len(list.Volumes))
	for _, v := range list.Volumes {
		created, _ := time.Parse(time.RFC3339, v.CreatedAt)
		out = append(out, Volume{Name: v.Name, Labels: v.Labels, Mountpoint: v.Mountpoint, CreatedAt: created})
	}
	slices.SortFunc(out, func(a, b Volume) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// RemoveVolume deletes a named volume and its data; a missing one is not
// an error.
func (d *Docker) RemoveVolume(ctx context.Context, name string) error {
	if err := d.c.VolumeRemove(ctx, name, false); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove volume %s: %w", name, err)
	}
	return nil
}

// labelFilter selects what carries every one of labels.
func labelFilter(labels map[string]string) filters.Args {
	args := filters.NewArgs()
	for k, v := range labels {
		args.Add("label", k+"="+v)
	}
	return args
}
