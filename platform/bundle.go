package platform

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	// ImageUpdate asks to pull Image before use (Dockerrun Image.Update,
	// true unless the bundle says false).
	ImageUpdate bool
	// Run holds Dockerrun's Entrypoint, Command, Volumes and Logging.
	Run Run
	// Options are the bundle's .ebextensions settings.
	Options Options
	// Hooks are the bundle's .platform hooks and confighooks.
	Hooks Hooks
	// Notes are things the user should know (for example, that a
	// Dockerrun.aws.json was ignored because a Dockerfile exists).
	Notes []string
}

func invalid(file, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidBundle, file, fmt.Sprintf(format, args...))
}

// Inspect reads and checks the bundle rooted at dir: its Dockerfile or
// Dockerrun.aws.json (a Dockerfile wins, as on Elastic Beanstalk), its
// .ebextensions and its .platform hooks. Nothing in the bundle runs.
func Inspect(dir string) (*Spec, error) {
	spec, err := inspectImage(dir)
	if err != nil {
		return nil, err
	}
	opts, notes, err := ReadExtensions(dir)
	if err != nil {
		return nil, err
	}
	spec.Options = *opts
	spec.Notes = append(spec.Notes, notes...)
	hooks, notes, err := FindHooks(dir)
	if err != nil {
		return nil, err
	}
	spec.Hooks = hooks
	spec.Notes = append(spec.Notes, notes...)
	spec.Notes = append(spec.Notes, IgnoredPlatformDirs(dir)...)
	return spec, nil
}

func inspectImage(dir string) (*Spec, error) {
	df, dfErr := os.ReadFile(filepath.Join(dir, DockerfileName))
	_, drErr := os.Stat(filepath.Join(dir, DockerrunName))
	switch {
	case dfErr == nil:
		spec, err := ParseDockerfile(df)
		if err != nil {
			return nil, err
		}
		if drErr != nil {
			return spec, nil
		}
		// As on Elastic Beanstalk, the Dockerfile builds the image and the
		// Dockerrun.aws.json says how to run it.
		b, err := os.ReadFile(filepath.Join(dir, DockerrunName))
		if err != nil {
			return nil, err
		}
		dr, err := parseDockerrun(b, true)
		if err != nil {
			return nil, err
		}
		spec.Run = dr.Run
		spec.ContainerPort = cmp.Or(dr.ContainerPort, spec.ContainerPort)
		spec.Notes = append(spec.Notes, dr.Notes...)
		if dr.Image != "" {
			spec.Notes = append(spec.Notes, "Dockerrun.aws.json: Image "+dr.Image+" is ignored: the image is built from the Dockerfile, as on Elastic Beanstalk")
		}
		return spec, nil
	case drErr == nil:
		b, err := os.ReadFile(filepath.Join(dir, DockerrunName))
		if err != nil {
			return nil, err
		}
		return parseDockerrun(b, false)
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
