package platform

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/google/shlex"
)

// Run says how a version's container is started, beyond its image: what
// Dockerrun.aws.json asks for. It is kept with the version, so that a
// rollback starts the container the same way.
type Run struct {
	// Entrypoint and Command replace the image's ENTRYPOINT and CMD when
	// set.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Command    []string `json:"command,omitempty"`
	// Binds are Dockerrun Volumes: host directories mounted into the
	// container.
	Binds []Bind `json:"binds,omitempty"`
	// LogDir is the container directory the app writes log files to
	// (Dockerrun Logging); the agent keeps it on the host.
	LogDir string `json:"log_dir,omitempty"`
}

// Bind mounts a host directory into the container.
type Bind struct {
	HostDir      string `json:"host_dir"`
	ContainerDir string `json:"container_dir"`
}

// BundleDir is where Elastic Beanstalk unpacks the serving bundle. A
// Dockerrun volume under it mounts the version's own bundle files.
const BundleDir = "/var/app/current"

// dockerrun is the version 1 Dockerrun.aws.json of Elastic Beanstalk's
// single-container Docker platform.
type dockerrun struct {
	AWSEBDockerrunVersion json.RawMessage `json:"AWSEBDockerrunVersion"`
	Image                 *struct {
		Name   string `json:"Name"`
		Update any    `json:"Update,omitempty"`
	} `json:"Image"`
	Ports []struct {
		ContainerPort any `json:"ContainerPort"`
		HostPort      any `json:"HostPort,omitempty"`
	} `json:"Ports"`
	Volumes []struct {
		HostDirectory      string `json:"HostDirectory"`
		ContainerDirectory string `json:"ContainerDirectory"`
	} `json:"Volumes,omitempty"`
	Logging        string          `json:"Logging,omitempty"`
	Entrypoint     json.RawMessage `json:"Entrypoint,omitempty"`
	Command        json.RawMessage `json:"Command,omitempty"`
	Authentication json.RawMessage `json:"Authentication,omitempty"`
}

// parseDockerrun reads a version 1 Dockerrun.aws.json; next to a
// Dockerfile, Image may be left out. Unknown keys and invalid values are
// errors that name the key.
func parseDockerrun(b []byte, withDockerfile bool) (*Spec, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var dr dockerrun
	if err := dec.Decode(&dr); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			line := 1 + bytes.Count(b[:min(int(syn.Offset), len(b))], []byte("\n"))
			return nil, invalid(DockerrunName, "line %d: %v", line, err)
		}
		return nil, invalid(DockerrunName, "%v", strings.TrimPrefix(err.Error(), "json: "))
	}
	version := strings.Trim(string(dr.AWSEBDockerrunVersion), `"`)
	switch version {
	case "1":
	case "":
		return nil, invalid(DockerrunName, `AWSEBDockerrunVersion is missing; add "AWSEBDockerrunVersion": "1"`)
	default:
		return nil, invalid(DockerrunName, "AWSEBDockerrunVersion %s is not supported; Sprout runs version 1 (one container per app)", version)
	}
	spec := &Spec{Kind: KindImage, ImageUpdate: true}
	if dr.Image != nil {
		spec.Image = strings.TrimSpace(dr.Image.Name)
	}
	if spec.Image == "" && !withDockerfile {
		return nil, invalid(DockerrunName, `Image.Name is missing; name the image to run, e.g. "Image": {"Name": "nginx:1.25"}`)
	}
	if dr.Image != nil && dr.Image.Update != nil {
		u, err := boolValue(dr.Image.Update)
		if err != nil {
			return nil, invalid(DockerrunName, "Image.Update: %v", err)
		}
		spec.ImageUpdate = u
	}
	if len(dr.Ports) > 0 {
		p, err := portValue(dr.Ports[0].ContainerPort)
		if err != nil {
			return nil, invalid(DockerrunName, "Ports[0].ContainerPort: %v", err)
		}
		spec.ContainerPort = p
		if len(dr.Ports) > 1 {
			spec.Notes = append(spec.Notes, fmt.Sprintf("Dockerrun.aws.json: only the first of %d Ports is served, as on Elastic Beanstalk", len(dr.Ports)))
		}
	}
	for i, v := range dr.Volumes {
		host, err := absDir(v.HostDirectory)
		if err != nil {
			return nil, invalid(DockerrunName, "Volumes[%d].HostDirectory: %v", i, err)
		}
		ctr, err := absDir(v.ContainerDirectory)
		if err != nil {
			return nil, invalid(DockerrunName, "Volumes[%d].ContainerDirectory: %v", i, err)
		}
		spec.Run.Binds = append(spec.Run.Binds, Bind{HostDir: host, ContainerDir: ctr})
	}
	if dr.Logging != "" {
		dir, err := absDir(dr.Logging)
		if err != nil {
			return nil, invalid(DockerrunName, "Logging: %v", err)
		}
		spec.Run.LogDir = dir
	}
	var err error
	if spec.Run.Entrypoint, err = words(dr.Entrypoint); err != nil {
		return nil, invalid(DockerrunName, "Entrypoint: %v", err)
	}
	if spec.Run.Command, err = words(dr.Command); err != nil {
		return nil, invalid(DockerrunName, "Command: %v", err)
	}
	if len(dr.Authentication) > 0 {
		spec.Notes = append(spec.Notes, "Dockerrun.aws.json: Authentication (a registry login file in S3) is not used; log the host in with `docker login` instead")
	}
	return spec, nil
}

// absDir checks a directory path from a bundle: absolute and clean.
func absDir(p string) (string, error) {
	switch {
	case p == "":
		return "", errors.New("is missing")
	case !path.IsAbs(p):
		return "", fmt.Errorf("%q is not an absolute path (start it with /)", p)
	case strings.Contains(p, "\x00"):
		return "", errors.New("contains a NUL byte")
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", fmt.Errorf("%q contains ..", p)
		}
	}
	return path.Clean(p), nil
}

// words reads an Entrypoint or Command: a JSON array of strings, or a
// string split as a shell would (quotes group words; nothing is expanded).
func words(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err == nil {
		if len(list) == 0 {
			return nil, errors.New("is an empty list")
		}
		return list, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("%s is neither a string nor a list of strings", raw)
	}
	out, err := shlex.Split(s)
	if err != nil {
		return nil, fmt.Errorf("%q: %v (check its quotes)", s, err)
	}
	if len(out) == 0 {
		return nil, errors.New("is empty")
	}
	return out, nil
}

// boolValue accepts true or false as JSON booleans or strings, as
// Elastic Beanstalk does.
func boolValue(v any) (bool, error) {
	switch x := v.(type) {
	case bool:
		return x, nil
	case string:
		b, err := strconv.ParseBool(strings.TrimSpace(x))
		if err != nil {
			return false, fmt.Errorf("%q is not true or false", x)
		}
		return b, nil
	}
	return false, fmt.Errorf("%v is not true or false", v)
}

// portValue accepts a port as a JSON number or string, as Elastic Beanstalk does.
func portValue(v any) (int, error) {
	switch x := v.(type) {
	case float64:
		if x != float64(int(x)) {
			return 0, fmt.Errorf("%v is not a whole number", x)
		}
		return parsePort(strconv.Itoa(int(x)))
	case string:
		return parsePort(x)
	case nil:
		return 0, errors.New("is missing")
	}
	return 0, fmt.Errorf("%v is not a port number", v)
}
