package platform

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDockerrunInFull(t *testing.T) {
	spec, err := parseDockerrun([]byte(`{
  "AWSEBDockerrunVersion": "1",
  "Image": {"Name": "web:1", "Update": "false"},
  "Ports": [{"ContainerPort": 8000}],
  "Volumes": [{"HostDirectory": "/var/app/mydb/", "ContainerDirectory": "/etc/mysql"}],
  "Logging": "/var/log/nginx",
  "Entrypoint": "/bin/sh -c",
  "Command": ["echo 'hi there'", "x"]
}`), false)
	if err != nil {
		t.Fatal(err)
	}
	want := Run{
		Entrypoint: []string{"/bin/sh", "-c"},
		Command:    []string{"echo 'hi there'", "x"},
		Binds:      []Bind{{HostDir: "/var/app/mydb", ContainerDir: "/etc/mysql"}},
		LogDir:     "/var/log/nginx",
	}
	if !reflect.DeepEqual(spec.Run, want) || spec.ImageUpdate || spec.ContainerPort != 8000 {
		t.Errorf("spec = %+v", spec)
	}
	spec, err = parseDockerrun([]byte(`{"AWSEBDockerrunVersion": "1", "Image": {"Name": "x"}, "Command": "run --flag 'a b'"}`), false)
	if err != nil {
		t.Fatal(err)
	}
	if !spec.ImageUpdate || !reflect.DeepEqual(spec.Run.Command, []string{"run", "--flag", "a b"}) {
		t.Errorf("default update / quoted command: %+v", spec)
	}
	for src, want := range map[string]string{
		`"Image": {"Name": "x", "Update": "sometimes"}`:                                                   "Image.Update",
		`"Image": {"Name": "x"}, "Volumes": [{"HostDirectory": "data", "ContainerDirectory": "/d"}]`:      "Volumes[0].HostDirectory: \"data\" is not an absolute path",
		`"Image": {"Name": "x"}, "Volumes": [{"HostDirectory": "/a/../etc", "ContainerDirectory": "/d"}]`: "contains ..",
		`"Image": {"Name": "x"}, "Volumes": [{"HostDirectory": "/a"}]`:                                    "Volumes[0].ContainerDirectory: is missing",
		`"Image": {"Name": "x"}, "Logging": "logs"`:                                                       "Logging:",
		`"Image": {"Name": "x"}, "Command": "echo 'unclosed"`:                                             "Command:",
		`"Image": {"Name": "x"}, "Entrypoint": 7`:                                                         "Entrypoint: 7 is neither",
		`"Image": {"Name": "x"}, "Volumes": [{"HostDir": "/a"}]`:                                          `unknown field "HostDir"`,
	} {
		_, err := parseDockerrun([]byte(`{"AWSEBDockerrunVersion": "1", `+src+`}`), false)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), DockerrunName) {
			t.Errorf("%s: err = %v, want %q", src, err, want)
		}
	}
}

func TestDockerrunNextToDockerfile(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, DockerfileName, "FROM scratch\nEXPOSE 81\n", 0o644)
	write(t, dir, DockerrunName, `{"AWSEBDockerrunVersion":"1","Image":{"Name":"x"},"Ports":[{"ContainerPort":82}],"Logging":"/logs"}`, 0o644)
	spec, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Kind != KindDockerfile || spec.ContainerPort != 82 || spec.Run.LogDir != "/logs" || len(spec.Notes) != 1 || !strings.Contains(spec.Notes[0], "Image x is ignored") {
		t.Errorf("spec = %+v", spec)
	}
}

func write(t *testing.T, dir, name, body string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
}

func TestExtensions(t *testing.T) {
	dir := t.TempDir()
	// Both forms, a JSON file, the default namespace, and a later file
	// winning over an earlier one.
	write(t, dir, ".ebextensions/01-map.config", `
option_settings:
  aws:elasticbeanstalk:application:environment:
    GREETING: hello
    WORKERS: 3
  aws:elasticbeanstalk:application:
    Application Healthcheck URL: HTTP:80/health
  aws:elasticbeanstalk:command:
    DeploymentPolicy: Immutable
    Timeout: "900"
    IgnoreHealthCheck: true
  aws:autoscaling:asg:
    MinSize: 2
packages:
  yum:
    git: []
`, 0o644)
	write(t, dir, ".ebextensions/02-list.config", `
option_settings:
  - namespace: aws:elasticbeanstalk:application:environment
    option_name: GREETING
    value: bonjour
  - option_name: MODE
    value: prod
  - namespace: aws:elasticbeanstalk:environment:proxy
    option_name: ProxyServer
    value: none
`, 0o644)
	write(t, dir, ".ebextensions/03.config", "{\n\t\"option_settings\": {\"aws:elasticbeanstalk:command\": {\"BatchSize\": \"30\", \"BatchSizeType\": \"Fixed\"}}\n}\n", 0o644)
	write(t, dir, ".ebextensions/notes.txt", "not a config", 0o644)
	o, notes, err := ReadExtensions(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := Options{
		Env:        map[string]string{"GREETING": "bonjour", "WORKERS": "3", "MODE": "prod"},
		HealthPath: "/health",
		Deploy:     Policy{DeploymentPolicy: "Immutable", Timeout: 900 * time.Second, IgnoreHealthCheck: true, BatchSize: 30, BatchSizeType: "Fixed"},
		ProxyNone:  true,
	}
	if !reflect.DeepEqual(*o, want) {
		t.Errorf("options = %+v\nwant      %+v", *o, want)
	}
	joined := strings.Join(notes, "\n")
	for _, w := range []string{".ebextensions/01-map.config: aws:autoscaling:asg ignored", ".ebextensions/01-map.config: packages ignored"} {
		if !strings.Contains(joined, w) {
			t.Errorf("notes lack %q:\n%s", w, joined)
		}
	}
}

func TestExtensionErrors(t *testing.T) {
	for body, want := range map[string]string{
		"option_settings:\n  aws:elasticbeanstalk:command:\n    Timout: 30\n":                              "01.config line 3: aws:elasticbeanstalk:command has no option \"Timout\"",
		"option_settings:\n  aws:elasticbeanstalk:command:\n    DeploymentPolicy: Fast\n":                  "line 3: aws:elasticbeanstalk:command: DeploymentPolicy: \"Fast\" is not one of AllAtOnce",
		"option_settings:\n  aws:elasticbeanstalk:command:\n    Timeout: 0\n":                              "from 1 to 3600",
		"option_settings:\n  aws:elasticbeanstalk:application:\n    Application Healthcheck URL: TCP:80\n": "use /path",
		"option_settings:\n  aws:elasticbeanstalk:application:environment:\n    BAD KEY: 1\n":              "line 3: aws:elasticbeanstalk:application:environment: invalid environment property: \"BAD KEY\"",
		"option_settings:\n  aws:elasticbeanstalk:application:environment:\n    K: [1, 2]\n":               "K must be a single value",
		"option_setings:\n  x: y\n":                                                             "line 1: unknown section \"option_setings\"",
		"option_settings:\n\taws:x: y\n":                                                        "use spaces, not tabs",
		"option_settings:\n  - namespace: aws:x\n    option: y\n":                               "line 3: unknown key \"option\"",
		"option_settings:\n  - namespace: aws:x\n    value: y\n":                                "without option_name",
		"- just\n- a list\n":                                                                    "must be a mapping",
		"option_settings:\n  aws:elasticbeanstalk:environment:proxy:\n    ProxyServer: caddy\n": "not one of nginx, apache, none",
	} {
		dir := t.TempDir()
		write(t, dir, ".ebextensions/01.config", body, 0o644)
		_, _, err := ReadExtensions(dir)
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrInvalidBundle) {
			t.Errorf("%q:\n err = %v\nwant %q", body, err, want)
		}
	}
}

func TestHooks(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, ".platform/hooks/predeploy/02_second.sh", "#!/bin/sh\necho 2\n", 0o755)
	write(t, dir, ".platform/hooks/predeploy/01_first.sh", "#!/usr/bin/env sh\necho 1\n", 0o755)
	write(t, dir, ".platform/hooks/postdeploy/01.sh", "#!/bin/bash -e\necho post\n", 0o755)
	write(t, dir, ".platform/confighooks/predeploy/01.sh", "#!/bin/sh\necho config\n", 0o755)
	hooks, _, err := FindHooks(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range hooks.Stage(StagePredeploy, false) {
		got = append(got, h.Path)
	}
	if !reflect.DeepEqual(got, []string{".platform/hooks/predeploy/01_first.sh", ".platform/hooks/predeploy/02_second.sh"}) {
		t.Errorf("predeploy order = %v", got)
	}
	if c := hooks.Stage(StagePredeploy, true); len(c) != 1 || c[0].Path != ".platform/confighooks/predeploy/01.sh" {
		t.Errorf("confighooks = %v", c)
	}
	if len(hooks.Stage(StagePostdeploy, false)) != 1 || len(hooks.Stage(StagePrebuild, false)) != 0 {
		t.Errorf("hooks = %v", hooks)
	}

	for name, tc := range map[string]struct {
		path, body string
		mode       os.FileMode
		want       string
	}{
		"not executable": {".platform/hooks/predeploy/01.sh", "#!/bin/sh\n", 0o644, "is not executable; run `chmod +x .platform/hooks/predeploy/01.sh`"},
		"crlf":           {".platform/hooks/predeploy/01.sh", "#!/bin/sh\r\necho\r\n", 0o755, "Windows line endings"},
		"no shebang":     {".platform/hooks/predeploy/01.sh", "echo hi\n", 0o755, "line 1: no #! line"},
		"no interpreter": {".platform/hooks/predeploy/01.sh", "#!/bin/bashh\n", 0o755, "no interpreter /bin/bashh"},
		"env missing":    {".platform/hooks/postdeploy/01.py", "#!/usr/bin/env no-such-python\n", 0o755, "no no-such-python in PATH"},
		"bad stage":      {".platform/hooks/postdeplyo/01.sh", "#!/bin/sh\n", 0o755, `"postdeplyo" is not a hook stage`},
		"file in hooks/": {".platform/hooks/01.sh", "#!/bin/sh\n", 0o755, "hooks go in a stage folder"},
	} {
		dir := t.TempDir()
		write(t, dir, tc.path, tc.body, tc.mode)
		_, _, err := FindHooks(dir)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), ".platform/hooks") {
			t.Errorf("%s: err = %v, want %q", name, err, tc.want)
		}
	}
}

func TestRDS(t *testing.T) {
	env := Effective(map[string]string{"GREETING": "hi", "RDS_PORT": "1"}, map[string]string{
		"RDS_HOSTNAME": "db.example", "RDS_PORT": "5433", "RDS_DB_NAME": "ebdb",
		"RDS_USERNAME": "app", "RDS_PASSWORD": "p@ss:w/rd?#%",
	})
	u := env[DatabaseURL]
	if u != "postgres://app:p%40ss%3Aw%2Frd%3F%23%25@db.example:5433/ebdb" || env["GREETING"] != "hi" {
		t.Errorf("DATABASE_URL = %q (env %v)", u, env)
	}
	if got := Effective(nil, map[string]string{"RDS_HOSTNAME": "h", "RDS_PORT": "3306", "RDS_DB_NAME": "d", "RDS_USERNAME": "u", "RDS_PASSWORD": "p"})[DatabaseURL]; got != "mysql://u:p@h:3306/d" {
		t.Errorf("mysql by port: %q", got)
	}
	if got := Effective(nil, map[string]string{"RDS_HOSTNAME": "h", "RDS_ENGINE": "mariadb", "RDS_DB_NAME": "d"})[DatabaseURL]; got != "mysql://h:3306/d" {
		t.Errorf("engine: %q", got)
	}
	if got := Effective(nil, map[string]string{"RDS_HOSTNAME": "h", "DATABASE_URL": "mine"})[DatabaseURL]; got != "mine" {
		t.Errorf("user's DATABASE_URL lost: %q", got)
	}
	if _, ok := Effective(map[string]string{"A": "1"}, nil)[DatabaseURL]; ok {
		t.Error("DATABASE_URL without RDS_HOSTNAME")
	}

	rds, err := ParseRDS("postgres://app:s%40cret@10.0.0.5/ebdb")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"RDS_HOSTNAME": "10.0.0.5", "RDS_PORT": "5432", "RDS_DB_NAME": "ebdb", "RDS_USERNAME": "app", "RDS_PASSWORD": "s@cret", "RDS_ENGINE": "postgres"}
	if !reflect.DeepEqual(rds, want) {
		t.Errorf("ParseRDS = %v", rds)
	}
	if got := Effective(nil, rds)[DatabaseURL]; got != "postgres://app:s%40cret@10.0.0.5:5432/ebdb" {
		t.Errorf("round trip = %q", got)
	}
	for raw, want := range map[string]string{
		"redis://u:p@h/0":           "is not postgres",
		"postgres://u:p@/db":        "no host",
		"postgres://u:p@h:99999/db": "port",
		"postgres://u:p@h:5432":     "name one database",
		"postgres://h:5432/db":      "no user name",
	} {
		if _, err := ParseRDS(raw); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", raw, err, want)
		}
	}
}
