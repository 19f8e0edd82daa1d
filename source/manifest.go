package source

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Manifest names the version a fleet should serve: the pull mode's
// source of truth, kept in S3 (s3://bucket/envs/web/current.json) and
// written by `sprout publish`. Agents that follow it converge on it.
type Manifest struct {
	// App, when set, must be the app that follows the manifest.
	App string `json:"app,omitempty"`
	// Label is the version's label.
	Label string `json:"label"`
	// Bundle is the version's bundle: s3://bucket/key, a key in the
	// manifest's own bucket, or a git URL#ref.
	Bundle string `json:"bundle"`
	// Env holds the app's environment properties.
	Env map[string]string `json:"env,omitempty"`
	// Port is the app's public port, when the manifest sets it.
	Port int `json:"port,omitempty"`
}

// ParseManifest reads a manifest strictly: unknown keys are errors.
func ParseManifest(b []byte) (*Manifest, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: the manifest is not valid: %v", ErrInvalid, strings.TrimPrefix(err.Error(), "json: "))
	}
	switch {
	case m.Label == "":
		return nil, fmt.Errorf("%w: the manifest names no label", ErrInvalid)
	case m.Bundle == "":
		return nil, fmt.Errorf("%w: the manifest names no bundle", ErrInvalid)
	case m.Port < 0 || m.Port > 65535:
		return nil, fmt.Errorf("%w: the manifest's port %d is not a port", ErrInvalid, m.Port)
	}
	return &m, nil
}

// BundleRef resolves the manifest's bundle: a bare key is in the bucket
// of the manifest at manifestURL.
func (m *Manifest) BundleRef(manifestURL string) (string, error) {
	if strings.HasPrefix(m.Bundle, "file://") {
		// A manifest comes from whoever can write the bucket: it may not
		// read the host's own repositories.
		return "", fmt.Errorf("%w: the manifest names a local repository (%s); name s3://bucket/key or a remote git URL", ErrInvalid, m.Bundle)
	}
	if IsRemote(m.Bundle) {
		return m.Bundle, Check(m.Bundle)
	}
	obj, err := ParseS3URL(manifestURL)
	if err != nil {
		return "", err
	}
	return Object{Bucket: obj.Bucket, Key: strings.TrimPrefix(m.Bundle, "/")}.String(), nil
}

// Marshal writes the manifest as indented JSON.
func (m *Manifest) Marshal() []byte {
	b, _ := json.MarshalIndent(m, "", "  ")
	return append(b, '\n')
}

// GetIfChanged reads the object at ref (s3://bucket/key) unless its ETag
// is still etag.
func (f *Fetcher) GetIfChanged(ctx context.Context, ref, etag string) ([]byte, string, bool, error) {
	obj, err := ParseS3URL(ref)
	if err != nil {
		return nil, "", false, err
	}
	s, err := f.S3(ctx)
	if err != nil {
		return nil, "", false, err
	}
	return s.GetIfChanged(ctx, obj, etag)
}

// IsNotFound tells whether err says an object or bucket does not exist.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
