package platform

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseDockerfile(t *testing.T) {
	cases := []struct {
		name      string
		src       string
		port      int
		health    bool
		wantError string
	}{
		{"expose first", "FROM scratch\nEXPOSE 8080 9090\nEXPOSE 7000\n", 8080, false, ""},
		{"protocol suffix and case", "from scratch\nexpose 5000/tcp\n", 5000, false, ""},
		{"continuation and comment", "FROM scratch\n# EXPOSE 1\nEXPOSE \\\n  3000\n", 3000, false, ""},
		{"variable skipped", "FROM scratch\nEXPOSE $PORT 4000\n", 4000, false, ""},
		{"no expose", "FROM scratch\nCOPY app /app\n", 0, false, ""},
		{"healthcheck", "FROM scratch\nHEALTHCHECK CMD [\"/app\", \"-check\"]\n", 0, true, ""},
		{"healthcheck none", "FROM scratch\nHEALTHCHECK NONE\n", 0, false, ""},
		{"bad port", "FROM scratch\nEXPOSE 99999\n", 0, false, "line 2: EXPOSE 99999"},
		{"no from", "EXPOSE 80\n", 0, false, "no FROM"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := ParseDockerfile([]byte(tc.src))
			if tc.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantError) || !errors.Is(err, ErrInvalidBundle) {
					t.Fatalf("err = %v, want %q", err, tc.wantError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if spec.ContainerPort != tc.port || spec.HasHealthcheck != tc.health {
				t.Errorf("got port %d health %v, want %d %v", spec.ContainerPort, spec.HasHealthcheck, tc.port, tc.health)
			}
		})
	}
}

func TestParseDockerrun(t *testing.T) {
	cases := []struct {
		name, src string
		image     string
		port      int
		wantError string
	}{
		{"number port", `{"AWSEBDockerrunVersion": "1", "Image": {"Name": "web:1"}, "Ports": [{"ContainerPort": 8000}]}`, "web:1", 8000, ""},
		{"string port and version number", `{"AWSEBDockerrunVersion": 1, "Image": {"Name": "web:1", "Update": "false"}, "Ports": [{"ContainerPort": "80", "HostPort": "8000"}]}`, "web:1", 80, ""},
		{"unknown key", `{"AWSEBDockerrunVersion": "1", "Image": {"Name": "x"}, "Portz": []}`, "", 0, `unknown field "Portz"`},
		{"version 2", `{"AWSEBDockerrunVersion": 2}`, "", 0, "version 1"},
		{"no image", `{"AWSEBDockerrunVersion": "1"}`, "", 0, "Image.Name is missing"},
		{"syntax error line", "{\n\"AWSEBDockerrunVersion\": \"1\",\n}", "", 0, "line 3"},
		{"bad port", `{"AWSEBDockerrunVersion": "1", "Image": {"Name": "x"}, "Ports": [{"ContainerPort": 0}]}`, "", 0, "Ports[0].ContainerPort"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := parseDockerrun([]byte(tc.src), false)
			if tc.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantError) {
					t.Fatalf("err = %v, want %q", err, tc.wantError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if spec.Kind != KindImage || spec.Image != tc.image || spec.ContainerPort != tc.port {
				t.Errorf("spec = %+v", spec)
			}
		})
	}
}

func TestInspectPrefersDockerfile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, DockerfileName), []byte("FROM scratch\nEXPOSE 81\n"), 0o644)
	os.WriteFile(filepath.Join(dir, DockerrunName), []byte(`{"AWSEBDockerrunVersion":"1","Image":{"Name":"x"},"Ports":[{"ContainerPort":82}]}`), 0o644)
	spec, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Kind != KindDockerfile || spec.ContainerPort != 82 || len(spec.Notes) != 1 {
		t.Errorf("spec = %+v", spec)
	}
	if _, err := Inspect(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no Dockerfile or Dockerrun.aws.json") {
		t.Errorf("empty bundle: %v", err)
	}
}

func TestEnvRules(t *testing.T) {
	set, unset, err := ParseAssignments([]string{"A=1", "B=", "URL=postgres://u:p@h/db?x=y", "aws:key/x@y=ok"})
	if err != nil {
		t.Fatal(err)
	}
	if set["A"] != "1" || set["URL"] != "postgres://u:p@h/db?x=y" || len(unset) != 1 || unset[0] != "B" || set["aws:key/x@y"] != "ok" {
		t.Errorf("set=%v unset=%v", set, unset)
	}
	for _, bad := range []string{"NOEQUALS", "=v", "BAD KEY=v", "K$=v", strings.Repeat("K", 129) + "=v"} {
		if _, _, err := ParseAssignments([]string{bad}); !errors.Is(err, ErrInvalidEnv) {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
	if err := ValidateEnv(map[string]string{"K": strings.Repeat("v", 257)}); err == nil {
		t.Error("value over 256 accepted")
	}
	big := map[string]string{}
	for i := range 20 {
		big[strings.Repeat("K", 10)+string(rune('a'+i))] = strings.Repeat("v", 250)
	}
	if err := ValidateEnv(big); err == nil || !strings.Contains(err.Error(), "4096") {
		t.Errorf("total over 4096: %v", err)
	}
	got := Apply(map[string]string{"A": "0", "B": "1"}, set, unset)
	if got["A"] != "1" || got["B"] != "" || len(got) != 3 {
		t.Errorf("apply = %v", got)
	}
	for k, want := range map[string]bool{"DB_PASSWORD": true, "SECRET_KEY_BASE": true, "API_KEY": true, "GITHUB_TOKEN": true, "RDS_PASSWORD": true, "PORT": false, "KEYBOARD": false, "LOG_LEVEL": false} {
		if IsSecret(k) != want {
			t.Errorf("IsSecret(%s) = %v", k, !want)
		}
	}
}
