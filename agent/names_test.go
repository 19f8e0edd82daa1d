package agent

import (
	"strings"
	"testing"

	"github.com/sprout-paas/sprout/store"
)

func TestNameLimits(t *testing.T) {
	if err := ValidateLabel(strings.Repeat("v", 128)); err != nil {
		t.Errorf("128-byte label: %v", err)
	}
	for _, bad := range []string{strings.Repeat("v", 129), ".v1", "v 1", ""} {
		if ValidateLabel(bad) == nil {
			t.Errorf("label %q accepted", bad)
		}
	}
	if err := ValidateVolume(store.Volume{Name: strings.Repeat("d", 63), Path: "/d"}); err != nil {
		t.Errorf("63-byte volume name: %v", err)
	}
	for _, bad := range []store.Volume{{Name: strings.Repeat("d", 64), Path: "/d"}, {Name: "Data", Path: "/d"}, {Name: "d", Path: "d"}, {Name: "d", Path: "/"}, {Name: "d", Path: "/a/../b"}} {
		if ValidateVolume(bad) == nil {
			t.Errorf("volume %+v accepted", bad)
		}
	}
	for path, want := range map[string]string{"/data": "data", "/var/lib/Post gres": "var-lib-post_gres"} {
		if got := imageVolumeName(path); got != want {
			t.Errorf("imageVolumeName(%q) = %q, want %q", path, got, want)
		}
	}
}
