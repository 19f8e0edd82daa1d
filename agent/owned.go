package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/sprout-paas/sprout/runtime"
)

// What an agent makes on the container engine carries its id, so that
// agents that share one engine (a fleet's test, several agents on one
// machine) never take, prune or remove each other's:
//
//   - containers are labelled io.sprout.agent=<id>, and every list of them
//     asks for that label; the one removed by name (the undo of a start,
//     written down before the container exists) is removed only if it
//     carries the label;
//   - image tags are sprout-<id>/<app>:<label>, and a built image is also
//     labelled with the id;
//   - volumes are sprout-<id>-<app>--<volume>, labelled with the id, the
//     app and the volume's name. App names have no "--", so no two apps'
//     volumes share a name.
//
// Agents before this tagged sprout/<app>:<label> and named volumes
// sprout-<app>-<volume>. Their versions keep their tags (Version.Image),
// and a volume an agent already keeps under the old name stays in use, so
// that an upgrade loses neither its rollbacks nor its data.

// imageTag tags the image of app's version label.
func (a *Agent) imageTag(app, label string) string {
	return "sprout-" + a.id + "/" + app + ":" + label
}

// oldImagePrefix starts the tags agents made before tags carried their id.
const oldImagePrefix = "sprout/"

// removeImage removes one of this agent's image tags: one of its own
// repository, or an old sprout/<app>:<label> of an image that no other
// agent built. Any other tag is left alone, with an error saying why. A
// tag that is already gone counts as removed.
func (a *Agent) removeImage(ctx context.Context, ref string) error {
	if !strings.HasPrefix(ref, "sprout-"+a.id+"/") {
		if !strings.HasPrefix(ref, oldImagePrefix) {
			return fmt.Errorf("image %s is not a tag of this agent's (%s): left alone", ref, a.id)
		}
		info, err := a.rt.Image(ctx, ref)
		if errors.Is(err, runtime.ErrImageMissing) {
			return nil
		}
		if err != nil {
			return err
		}
		if owner := info.Labels[runtime.LabelAgent]; owner != "" && owner != a.id {
			return fmt.Errorf("image %s was built by agent %s, not by this one (%s): left alone", ref, owner, a.id)
		}
	}
	return a.rt.RemoveImage(ctx, ref)
}

// removeOwnContainer removes the container named (or identified by) ref
// if it is this agent's, after keeping its logs; one of another agent's,
// or one that is gone, is left alone.
func (a *Agent) removeOwnContainer(ctx context.Context, app, label, ref string) error {
	c, err := a.rt.Container(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		// Whose it is is unknown, so it stays; an agent's start removes
		// its orphans by label.
		return fmt.Errorf("inspect container %s: %w", ref, err)
	}
	if owner := c.Labels[runtime.LabelAgent]; owner != a.id {
		a.log.Warn("container is not this agent's: left alone", "container", ref, "owner", owner)
		return nil
	}
	a.archiveLogs(ctx, app, label, c.ID)
	return a.rt.Remove(ctx, c.ID)
}

// ownVolumes lists the volumes this agent keeps for app.
func (a *Agent) ownVolumes(ctx context.Context, app string) ([]runtime.Volume, error) {
	return a.rt.Volumes(ctx, map[string]string{runtime.LabelAgent: a.id, runtime.LabelApp: app})
}

// volumeName is the engine's name of app's volume name: the old
// sprout-<app>-<name> when this agent keeps it under that name (own lists
// its volumes of app), else sprout-<id>-<app>--<name>.
func (a *Agent) volumeName(own []runtime.Volume, app, name string) string {
	old := "sprout-" + app + "-" + name
	for _, v := range own {
		if v.Name == old && v.Labels[LabelVolume] == name {
			return old
		}
	}
	return "sprout-" + a.id + "-" + app + "--" + name
}
