package agent_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/runtime"
	"github.com/sprout-paas/sprout/store"
)

// engineState is what the engine holds of one agent's app.
type engineState struct {
	containers []string
	images     []string // the tags of the versions the agent keeps
	volumes    []string
}

// engineStateOf reads what the engine holds of h's app: its containers
// and volumes by h's label, and the tags of its versions that exist.
func engineStateOf(t *testing.T, h *harness, app string) engineState {
	t.Helper()
	ctx := context.Background()
	var s engineState
	s.containers = testenv.Containers(t, h.ag.ID())
	slices.Sort(s.containers)
	vs, _ := h.st.Versions(app)
	for _, v := range vs {
		if v.Image == "" {
			continue
		}
		if _, err := h.docker.Image(ctx, v.Image); err == nil {
			s.images = append(s.images, v.Image)
		}
	}
	slices.Sort(s.images)
	vols, err := h.docker.Volumes(ctx, map[string]string{runtime.LabelAgent: h.ag.ID()})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vols {
		s.volumes = append(s.volumes, v.Name)
	}
	return s
}

func (s engineState) String() string {
	return fmt.Sprintf("containers %v, images %v, volumes %v", s.containers, s.images, s.volumes)
}

// dockerrunBundle names image in a Dockerrun.aws.json.
func dockerrunBundle(t *testing.T, image string) string {
	return writeFiles(t, t.TempDir(), map[string]string{"Dockerrun.aws.json": `{"AWSEBDockerrunVersion": "1", "Image": {"Name": "` + image + `", "Update": "false"}, "Ports": [{"ContainerPort": 8080}]}`})
}

// TestAgentsSharingAnEngineKeepToTheirOwn runs two agents on one engine
// that deploy the same app with the same labels, built and from one
// Dockerrun image: each serves its own containers and keeps its own data,
// and one's prunes, rollbacks, restarts (with an undo that names the
// other's container) and `apps rm --purge` leave the other's containers,
// images and volumes alone.
func TestAgentsSharingAnEngineKeepToTheirOwn(t *testing.T) {
	t.Parallel()
	a, b := newHarness(t), newHarness(t)
	if a.ag.ID() == b.ag.ID() {
		t.Fatalf("two agents with one id %s", a.ag.ID())
	}
	ctx := context.Background()
	app := testenv.Name("shared")
	pa, pb := testenv.FreePort(t), testenv.FreePort(t)
	built := testenv.Bundle(t, "", "VOLUME /data")
	// An image on the host that a Dockerrun.aws.json names, as a pulled
	// one would be: tagged by neither agent, labelled by none.
	base := testenv.Name("sprout-test-base") + ":1"
	if _, err := a.docker.Build(ctx, testenv.Bundle(t, "", "ENV GREETING=base", "VOLUME /data"), base, nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", base).Run() })

	for _, h := range []struct {
		h    *harness
		port int
	}{{a, pa}, {b, pb}} {
		h.h.mustDeploy(app, "v1", built, portParam(h.port))
		post(t, h.port, "/file?path=/data/owner", h.h.ag.ID())
		h.h.mustDeploy(app, "v2", dockerrunBundle(t, base), nil)
	}
	serves := func(h *harness, port int, label string) {
		t.Helper()
		st, err := h.client.Status(ctx, app)
		if err != nil {
			t.Fatal(err)
		}
		if st.Serving != label || !slices.Contains(testenv.Containers(t, h.ag.ID()), st.ContainerID) {
			t.Errorf("agent %s serves %s on container %s, want %s on one of its own %v", h.ag.ID(), st.Serving, st.ContainerID, label, testenv.Containers(t, h.ag.ID()))
		}
		if code, body := get(t, port, "/"); code != 200 || !strings.HasPrefix(body, label+" ") {
			t.Errorf("agent %s's port: %d %q, want %s", h.ag.ID(), code, body, label)
		}
		if _, body := get(t, port, "/file?path=/data/owner"); body != h.ag.ID() {
			t.Errorf("agent %s's app reads another's data: %q", h.ag.ID(), body)
		}
	}
	serves(a, pa, "v2")
	serves(b, pb, "v2")

	sa, sb := engineStateOf(t, a, app), engineStateOf(t, b, app)
	for _, s := range []engineState{sa, sb} {
		if len(s.containers) != 1 || len(s.images) != 2 || len(s.volumes) != 1 {
			t.Fatalf("an agent holds %s, want 1 container, 2 tags, 1 volume", s)
		}
	}
	for _, x := range [][]string{sa.containers, sa.images, sa.volumes} {
		for _, y := range x {
			if slices.Contains(sb.containers, y) || slices.Contains(sb.images, y) || slices.Contains(sb.volumes, y) {
				t.Errorf("both agents hold %s", y)
			}
		}
	}
	if want := "sprout-" + b.ag.ID() + "/" + app + ":v2"; !slices.Contains(sb.images, want) {
		t.Errorf("b's tags %v lack %s", sb.images, want)
	}
	if want := "sprout-" + b.ag.ID() + "-" + app + "--data"; sb.volumes[0] != want {
		t.Errorf("b's volume is %s, want %s", sb.volumes[0], want)
	}
	unchanged := func(when string) {
		t.Helper()
		if now := engineStateOf(t, b, app); now.String() != sb.String() {
			t.Errorf("%s, b holds %s, want %s", when, now, sb)
		}
		serves(b, pb, "v2")
	}

	// a prunes v1 to v3, its Dockerrun version among them, and rolls back.
	for i := 3; i <= 7; i++ {
		a.mustDeploy(app, fmt.Sprintf("v%d", i), built, nil)
	}
	if vs, _ := a.st.Versions(app); !prunedUpTo(vs, 3) {
		t.Errorf("a pruned %v, want v1 to v3", versionsPruned(vs))
	}
	if _, err := a.client.Rollback(ctx, app, api.RollbackRequest{To: "v4"}, nil); err != nil {
		t.Fatal(err)
	}
	unchanged("after a's deploys, prunes and rollback")

	// A start that a's stop interrupted, written down by a name that b's
	// container bears (names end in a random suffix): a's restart undoes
	// it, and leaves b's container alone.
	bApp, err := b.st.App(app)
	if err != nil {
		t.Fatal(err)
	}
	clash := store.Undo{Kind: store.UndoRemove, Container: bApp.InstanceList()[0].Name, Label: "v8"}
	if err := a.st.PutJournal(&store.Journal{App: app, Op: "deploy", Label: "v8", Entries: []store.Undo{clash}}); err != nil {
		t.Fatal(err)
	}
	a.restart()
	unchanged("after a's restart")
	serves(a, pa, "v4")
	b.restart()
	serves(a, pa, "v4")
	unchanged("after b's restart")

	if _, err := a.client.RemoveApp(ctx, app, true, nil); err != nil {
		t.Fatal(err)
	}
	if left := engineStateOf(t, a, app); len(left.containers)+len(left.volumes) > 0 {
		t.Errorf("a's apps rm --purge left %s", left)
	}
	for _, tag := range sa.images {
		if _, err := a.docker.Image(ctx, tag); err == nil {
			t.Errorf("a's apps rm --purge left its tag %s", tag)
		}
	}
	unchanged("after a's apps rm --purge")
	if _, err := b.docker.Image(ctx, base); err != nil {
		t.Errorf("the image Dockerrun named is gone: %v", err)
	}
	// b still rolls back to its own v1, with its data.
	if _, err := b.client.Rollback(ctx, app, api.RollbackRequest{To: "v1"}, nil); err != nil {
		t.Fatal(err)
	}
	serves(b, pb, "v1")
}

// prunedUpTo tells whether exactly the versions v1 to vN are pruned.
func prunedUpTo(vs []*store.Version, n int) bool {
	for _, v := range vs {
		var i int
		fmt.Sscanf(v.Label, "v%d", &i)
		if v.ImagePruned != (i <= n) {
			return false
		}
	}
	return true
}

func versionsPruned(vs []*store.Version) []string {
	var out []string
	for _, v := range vs {
		if v.ImagePruned {
			out = append(out, v.Label)
		}
	}
	return out
}

// TestOldNamesKeepServing upgrades an agent whose engine objects have the
// names they had before they carried its id: a volume it keeps as
// sprout-<app>-<name> stays in use, with its data, and is deleted by
// `apps rm --purge`; a version tagged sprout/<app>:<label> rolls back and
// is pruned. Another agent that deploys the same app takes neither.
func TestOldNamesKeepServing(t *testing.T) {
	t.Parallel()
	h, other := newHarness(t), newHarness(t)
	ctx := context.Background()
	app, port, otherPort := testenv.Name("upgraded"), testenv.FreePort(t), testenv.FreePort(t)
	old := "sprout-" + app + "-data"
	labels := map[string]string{runtime.LabelAgent: h.ag.ID(), runtime.LabelApp: app, agent.LabelVolume: "data"}
	if err := h.docker.EnsureVolume(ctx, old, labels); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("docker", "volume", "rm", "-f", old).Run() })
	vols, err := h.docker.Volumes(ctx, labels)
	if err != nil || len(vols) != 1 {
		t.Fatalf("volumes %v %v", vols, err)
	}
	if err := os.WriteFile(filepath.Join(vols[0].Mountpoint, "kept"), []byte("before the upgrade"), 0o644); err != nil {
		testenv.Missing(t, fmt.Sprintf("cannot write into the volume from the host (%v)", err), "this test needs root on the engine's host")
	}

	dir := testenv.Bundle(t, "", "VOLUME /data")
	h.mustDeploy(app, "v1", dir, portParam(port))
	other.mustDeploy(app, "v1", dir, portParam(otherPort))
	if _, body := get(t, port, "/file?path=/data/kept"); body != "before the upgrade" {
		t.Errorf("the app reads %q from its volume, want the data kept under the old name", body)
	}
	if code, body := get(t, otherPort, "/file?path=/data/kept"); code != 404 {
		t.Errorf("another agent's app reads %d %q: it took the volume", code, body)
	}
	if s := engineStateOf(t, h, app); !slices.Equal(s.volumes, []string{old}) {
		t.Errorf("the upgraded agent holds volumes %v, want only %s", s.volumes, old)
	}
	infos, _ := h.ag.Volumes(ctx, app)
	if len(infos) != 1 || infos[0].Source != old || infos[0].Path != "/data" {
		t.Errorf("sprout volumes = %+v, want %s mounted at /data", infos, old)
	}

	// v1 as an agent before the upgrade tagged it.
	v1, err := h.st.Version(app, "v1")
	if err != nil {
		t.Fatal(err)
	}
	oldTag := "sprout/" + app + ":v1"
	if err := h.docker.Tag(ctx, v1.Image, oldTag); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", oldTag).Run() })
	if err := h.docker.RemoveImage(ctx, v1.Image); err != nil {
		t.Fatal(err)
	}
	v1.Image = oldTag
	if err := h.st.PutVersion(v1); err != nil {
		t.Fatal(err)
	}
	h.mustDeploy(app, "v2", dir, nil)
	if _, err := h.client.Rollback(ctx, app, api.RollbackRequest{To: "v1"}, nil); err != nil {
		t.Fatalf("rollback to a version tagged the old way: %v", err)
	}
	if _, body := get(t, port, "/file?path=/data/kept"); body != "before the upgrade" {
		t.Errorf("after the rollback the app reads %q", body)
	}
	for i := 3; i <= 6; i++ {
		h.mustDeploy(app, fmt.Sprintf("v%d", i), dir, nil)
	}
	if v, _ := h.st.Version(app, "v1"); !v.ImagePruned {
		t.Error("v1, tagged the old way, was not pruned")
	}
	if _, err := h.docker.Image(ctx, oldTag); err == nil {
		t.Errorf("%s survived its prune", oldTag)
	}

	if _, err := h.client.RemoveApp(ctx, app, true, nil); err != nil {
		t.Fatal(err)
	}
	if exec.Command("docker", "volume", "inspect", old).Run() == nil {
		t.Errorf("%s survived apps rm --purge", old)
	}
	if s := engineStateOf(t, other, app); len(s.volumes) != 1 || len(s.containers) != 1 {
		t.Errorf("the other agent holds %s after the first's apps rm --purge", s)
	}
	if _, body := get(t, otherPort, "/"); !strings.HasPrefix(body, "v1 ") {
		t.Errorf("the other agent's app answers %q", body)
	}
}
