package platform

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// File names the platform looks for at a bundle's root.
const (
	DockerfileName = "Dockerfile"
	DockerrunName  = "Dockerrun.aws.json"
)

// Kind says how a bundle becomes an image.
type Kind string

// The two kinds of Docker bundle.
const (
	// KindDockerfile bundles are built on the host.
	KindDockerfile Kind = "dockerfile"
	// KindImage bundles name an existing image in Dockerrun.aws.json.
	KindImage Kind = "image"
)

// ErrInvalidBundle is wrapped by every error about what a bundle contains.
var ErrInvalidBundle = errors.New("invalid bundle")

// Spec is what the platform learned from a bundle's root.
type Spec struct {
	Kind Kind
	// Image is the image a KindImage bundle runs.
	Image string
	// ContainerPort is the port the app listens on inside the container,
	// 0 when the bundle does not say.
	ContainerPort int
	// HasHealthcheck is true when the Dockerfile declares a HEALTHCHECK.
	HasHealthcheck bool
	// Notes are things the user should know (for example, that a
	// Dockerrun.aws.json was ignored because a Dockerfile exists).
	Notes []string
}

func invalid(file, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidBundle, file, fmt.Sprintf(format, args...))
}

// Inspect reads the bundle rooted at dir. A Dockerfile wins over a
// Dockerrun.aws.json, as on Elastic Beanstalk.
func Inspect(dir string) (*Spec, error) {
	df, dfErr := os.ReadFile(filepath.Join(dir, DockerfileName))
	_, drErr := os.Stat(filepath.Join(dir, DockerrunName))
	switch {
	case dfErr == nil:
		spec, err := ParseDockerfile(df)
		if err != nil {
			return nil, err
		}
		if drErr == nil {
			spec.Notes = append(spec.Notes, "both a Dockerfile and a Dockerrun.aws.json exist; the Dockerfile is used, as on Elastic Beanstalk")
		}
		return spec, nil
	case drErr == nil:
		b, err := os.ReadFile(filepath.Join(dir, DockerrunName))
		if err != nil {
			return nil, err
		}
		return ParseDockerrun(b)
	case !errors.Is(dfErr, os.ErrNotExist):
		return nil, dfErr
	}
	return nil, fmt.Errorf("%w: no Dockerfile or Dockerrun.aws.json at the bundle's root (put one next to your app's files, not in a subfolder)", ErrInvalidBundle)
}

// ParseDockerfile finds the first EXPOSEd port and whether a HEALTHCHECK is
// declared. It reads instructions only; the engine does the real parsing.
func ParseDockerfile(b []byte) (*Spec, error) {
	spec := &Spec{Kind: KindDockerfile}
	hasFrom := false
	for _, line := range logicalLines(b) {
		fields := strings.Fields(line.text)
		if len(fields) == 0 {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			hasFrom = true
		case "HEALTHCHECK":
			// HEALTHCHECK NONE disables an inherited check.
			spec.HasHealthcheck = len(fields) < 2 || !strings.EqualFold(fields[1], "NONE")
		case "EXPOSE":
			if spec.ContainerPort != 0 {
				continue
			}
			for _, f := range fields[1:] {
				port, _, _ := strings.Cut(f, "/")
				if strings.HasPrefix(port, "$") {
					continue // set by a build argument; --container-port says it
				}
				p, err := parsePort(port)
				if err != nil {
					return nil, invalid(DockerfileName, "line %d: EXPOSE %s: %v", line.no, f, err)
				}
				spec.ContainerPort = p
				break
			}
		}
	}
	if !hasFrom {
		return nil, invalid(DockerfileName, "no FROM instruction (a Dockerfile starts with FROM image, or FROM scratch)")
	}
	return spec, nil
}

type logicalLine struct {
	no   int
	text string
}

// logicalLines joins backslash continuations and drops comments.
func logicalLines(b []byte) []logicalLine {
	var out []logicalLine
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	no := 0
	for sc.Scan() {
		no++
		text := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(text, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = no
		}
		if strings.HasSuffix(text, "\\") {
			cur.WriteString(strings.TrimSuffix(text, "\\"))
			cur.WriteByte(' ')
			continue
		}
		cur.WriteString(text)
		out = append(out, logicalLine{no: start, text: cur.String()})
		cur.Reset()
	}
	if cur.Len() > 0 {
		out = append(out, logicalLine{no: start, text: cur.String()})
	}
	return out
}

func parsePort(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("%q is not a port number between 1 and 65535", s)
	}
	return p, nil
}

// Dockerrun is the version 1 Dockerrun.aws.json of Elastic Beanstalk's
// single-container Docker platform.
type Dockerrun struct {
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

// ParseDockerrun reads a version 1 Dockerrun.aws.json. Unknown keys are
// errors that name the key.
func ParseDockerrun(b []byte) (*Spec, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var dr Dockerrun
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
	if dr.Image == nil || strings.TrimSpace(dr.Image.Name) == "" {
		return nil, invalid(DockerrunName, `Image.Name is missing; name the image to run, e.g. "Image": {"Name": "nginx:1.25"}`)
	}
	spec := &Spec{Kind: KindImage, Image: strings.TrimSpace(dr.Image.Name)}
	var ignored []string
	for name, set := range map[string]bool{"Volumes": len(dr.Volumes) > 0, "Logging": dr.Logging != "", "Entrypoint": len(dr.Entrypoint) > 0, "Command": len(dr.Command) > 0, "Authentication": len(dr.Authentication) > 0} {
		if set {
			ignored = append(ignored, name)
		}
	}
	if len(ignored) > 0 {
		slices.Sort(ignored)
		spec.Notes = append(spec.Notes, fmt.Sprintf("Dockerrun.aws.json: %s not applied yet; the image's own settings are used", strings.Join(ignored, ", ")))
	}
	if len(dr.Ports) > 0 {
		p, err := portValue(dr.Ports[0].ContainerPort)
		if err != nil {
			return nil, invalid(DockerrunName, "Ports[0].ContainerPort: %v", err)
		}
		spec.ContainerPort = p
	}
	return spec, nil
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
