package agent

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/sprout-paas/sprout/platform"
	"github.com/sprout-paas/sprout/runtime"
	"github.com/sprout-paas/sprout/store"
)

// LabelVolume names an app's persistent volume on the engine.
const LabelVolume = "io.sprout.volume"

var (
	volumeNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`) // and at most 63 bytes
	notVolumeRe  = regexp.MustCompile(`[^a-z0-9_.-]+`)
)

// ValidateVolume checks a volume's name and container path.
func ValidateVolume(v store.Volume) error {
	if !validVolumeName(v.Name) {
		return fmt.Errorf("%w: volume name %q: use lowercase letters, digits, _ . and -, starting with a letter or digit", ErrInvalid, v.Name)
	}
	if !path.IsAbs(v.Path) || path.Clean(v.Path) != v.Path || v.Path == "/" {
		return fmt.Errorf("%w: volume %s: the container path %q must be a clean absolute path other than /", ErrInvalid, v.Name, v.Path)
	}
	return nil
}

func validVolumeName(s string) bool { return len(s) <= 63 && volumeNameRe.MatchString(s) }

// imageVolumeName names the volume kept for an image's VOLUME path:
// /var/lib/data becomes var-lib-data.
func imageVolumeName(p string) string {
	name := strings.ToLower(strings.Trim(strings.ReplaceAll(path.Clean(p), "/", "-"), "-"))
	name = notVolumeRe.ReplaceAllString(name, "_")
	if !validVolumeName(name) {
		name = "v" + randomID(4)
	}
	return name
}

// appVolumes lists the persistent volumes a version of app mounts: those
// declared with `sprout volumes add`, then one for each VOLUME of the
// image that none of them covers.
func appVolumes(app *store.App, v *store.Version) []store.Volume {
	out := slices.Clone(app.Volumes)
	for _, p := range v.ImageVolumes {
		if !slices.ContainsFunc(out, func(x store.Volume) bool { return x.Path == p }) {
			out = append(out, store.Volume{Name: imageVolumeName(p), Path: p})
		}
	}
	return out
}

// mounts makes what a version's container mounts: the app's persistent
// volumes, Dockerrun's host directories, and its Logging directory.
func (a *Agent) mounts(ctx context.Context, app *store.App, v *store.Version) ([]runtime.Mount, error) {
	own, err := a.ownVolumes(ctx, app.Name)
	if err != nil {
		return nil, err
	}
	var out []runtime.Mount
	for _, vol := range appVolumes(app, v) {
		name := a.volumeName(own, app.Name, vol.Name)
		labels := map[string]string{runtime.LabelAgent: a.id, runtime.LabelApp: app.Name, LabelVolume: vol.Name}
		if err := a.rt.EnsureVolume(ctx, name, labels); err != nil {
			return nil, err
		}
		out = append(out, runtime.Mount{Volume: name, Target: vol.Path})
	}
	for _, b := range v.Run.Binds {
		host, err := a.hostDir(v, b.HostDir)
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(host, 0o755); err != nil {
			return nil, fmt.Errorf("Dockerrun.aws.json volume %s: %w", b.HostDir, err)
		}
		out = append(out, runtime.Mount{HostDir: host, Target: b.ContainerDir})
	}
	if v.Run.LogDir != "" {
		dir := appLogDir(a.cfg, app.Name, v.Label)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		out = append(out, runtime.Mount{HostDir: dir, Target: v.Run.LogDir})
	}
	return out, nil
}

// hostDir says where on the host a Dockerrun HostDirectory is: under
// /var/app/current it is the version's own kept bundle, as on Elastic
// Beanstalk; anything else must be under one of the host directories the
// agent's config allows.
func (a *Agent) hostDir(v *store.Version, dir string) (string, error) {
	if rel, ok := strings.CutPrefix(dir, platform.BundleDir); ok && (rel == "" || rel[0] == '/') {
		if v.BundleDir == "" {
			return "", fmt.Errorf("%w: Dockerrun.aws.json mounts %s from the bundle, which is no longer kept on this host; deploy the bundle again", ErrConflict, dir)
		}
		return filepath.Join(v.BundleDir, filepath.FromSlash(rel)), nil
	}
	for _, root := range a.cfg.HostDirs {
		root = filepath.Clean(root)
		if dir == root || strings.HasPrefix(dir, root+"/") {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w: %s: Volumes HostDirectory %s is outside the host directories bundles may mount (volumes.host_dirs: %s); use a directory under one of them, or add it to volumes.host_dirs in the agent's config if you trust this bundle", platform.ErrInvalidBundle, platform.DockerrunName, dir, strings.Join(a.cfg.HostDirs, ", "))
}

// appLogDir holds the files a version writes to its Dockerrun Logging
// directory.
func appLogDir(c Config, app, label string) string {
	return filepath.Join(c.DataDir, "applogs", app, label)
}

// VolumeInfo describes one of an app's volumes.
type VolumeInfo struct {
	Name string `json:"name"`
	// Path is where the serving version mounts it, "" when it is not
	// mounted.
	Path string `json:"path,omitempty"`
	// From says who declared it: "sprout volumes add", "image VOLUME",
	// "Dockerrun.aws.json Volumes" or "Dockerrun.aws.json Logging".
	From string `json:"from"`
	// Source is the engine's volume name or the host directory.
	Source string `json:"source"`
	// HostPath is where the data lives on the host.
	HostPath string    `json:"host_path,omitempty"`
	Created  time.Time `json:"created,omitzero"`
}

// Volumes lists app's volumes: what the serving version mounts, and the
// persistent volumes kept on the host that it does not (until the app is
// removed with purge).
func (a *Agent) Volumes(ctx context.Context, name string) ([]VolumeInfo, error) {
	app, err := a.App(name)
	if err != nil {
		return nil, err
	}
	engine, err := a.ownVolumes(ctx, name)
	if err != nil {
		return nil, err
	}
	byName := map[string]runtime.Volume{}
	for _, ev := range engine {
		byName[ev.Name] = ev
	}
	var out []VolumeInfo
	seen := map[string]bool{}
	var v *store.Version
	if app.Serving != "" {
		v, _ = a.store.Version(name, app.Serving)
	}
	if v == nil {
		v = &store.Version{}
	}
	for _, vol := range appVolumes(app, v) {
		from := "sprout volumes add"
		if !slices.ContainsFunc(app.Volumes, func(x store.Volume) bool { return x.Name == vol.Name }) {
			from = "image VOLUME"
		}
		ename := a.volumeName(engine, name, vol.Name)
		seen[ename] = true
		ev := byName[ename]
		out = append(out, VolumeInfo{Name: vol.Name, Path: vol.Path, From: from, Source: ename, HostPath: ev.Mountpoint, Created: ev.CreatedAt})
	}
	for _, b := range v.Run.Binds {
		host, err := a.hostDir(v, b.HostDir)
		if err != nil {
			host = "(" + err.Error() + ")"
		}
		out = append(out, VolumeInfo{Name: b.HostDir, Path: b.ContainerDir, From: "Dockerrun.aws.json Volumes", Source: b.HostDir, HostPath: host})
	}
	if v.Run.LogDir != "" {
		dir := appLogDir(a.cfg, name, v.Label)
		out = append(out, VolumeInfo{Name: "logs", Path: v.Run.LogDir, From: "Dockerrun.aws.json Logging", Source: dir, HostPath: dir})
	}
	for _, ev := range engine {
		if !seen[ev.Name] {
			out = append(out, VolumeInfo{Name: ev.Labels[LabelVolume], From: "kept, not mounted", Source: ev.Name, HostPath: ev.Mountpoint, Created: ev.CreatedAt})
		}
	}
	return out, nil
}

// AddVolume declares a persistent volume of app and, when a version is
// serving, rolls it out with the health-gated swap.
func (a *Agent) AddVolume(ctx context.Context, name string, vol store.Volume, noWait bool, p Progress) error {
	if err := ValidateVolume(vol); err != nil {
		return err
	}
	return a.reconfigure(ctx, name, noWait, p, fmt.Sprintf("volume %s added at %s", vol.Name, vol.Path), func(app *store.App) error {
		for _, x := range app.Volumes {
			if x.Name == vol.Name || x.Path == vol.Path {
				return fmt.Errorf("%w: %s already has volume %s at %s", ErrConflict, app.Name, x.Name, x.Path)
			}
		}
		app.Volumes = append(slices.Clone(app.Volumes), vol)
		return nil
	})
}

// RemoveVolume stops mounting one of app's volumes. Its data is kept on
// the host until the app is removed with purge.
func (a *Agent) RemoveVolume(ctx context.Context, name, vol string, noWait bool, p Progress) error {
	return a.reconfigure(ctx, name, noWait, p, fmt.Sprintf("volume %s unmounted (its data is kept)", vol), func(app *store.App) error {
		i := slices.IndexFunc(app.Volumes, func(x store.Volume) bool { return x.Name == vol })
		if i < 0 {
			return fmt.Errorf("%w: %s has no volume %s declared with `sprout volumes add` (see `sprout volumes --app %s`)", ErrNotFound, app.Name, vol, app.Name)
		}
		app.Volumes = slices.Delete(slices.Clone(app.Volumes), i, i+1)
		return nil
	})
}
