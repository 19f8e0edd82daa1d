// Package bundle unpacks application bundles that come from strangers (zip,
// tar.gz or plain tar archives) into a directory, refusing anything that could
// escape that directory, exhaust the disk or hide a device file.
package bundle

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Limits bound what one bundle may unpack to. Zero values take the defaults.
type Limits struct {
	// MaxFiles is the largest number of entries (files, directories, links).
	MaxFiles int
	// MaxBytes is the largest total of uncompressed file bytes.
	MaxBytes int64
	// MaxRatio is the largest ratio of uncompressed bytes to archive bytes,
	// enforced once more than ratioFloor bytes have been written.
	MaxRatio int64
}

// Default limits, generous for real applications and far below what a bomb
// needs.
const (
	DefaultMaxFiles = 20000
	DefaultMaxBytes = 1 << 30 // 1 GiB
	DefaultMaxRatio = 200
	// ratioFloor is the size under which a high compression ratio is fine:
	// a small, very compressible bundle is not a bomb.
	ratioFloor = 8 << 20
)

func (l Limits) withDefaults() Limits {
	if l.MaxFiles <= 0 {
		l.MaxFiles = DefaultMaxFiles
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxRatio <= 0 {
		l.MaxRatio = DefaultMaxRatio
	}
	return l
}

// ErrRejected is wrapped by every error about a bundle's content, as opposed
// to an I/O failure of the host.
var ErrRejected = errors.New("bundle rejected")

// EntryError says which entry of a bundle was refused and why.
type EntryError struct {
	Entry  string
	Reason string
}

func (e *EntryError) Error() string {
	if e.Entry == "" {
		return e.Reason
	}
	return fmt.Sprintf("entry %q: %s", e.Entry, e.Reason)
}

// Unwrap makes every EntryError match ErrRejected.
func (e *EntryError) Unwrap() error { return ErrRejected }

func reject(entry, format string, args ...any) error {
	return &EntryError{Entry: entry, Reason: fmt.Sprintf(format, args...)}
}

// Format is the kind of archive a bundle is.
type Format string

// The archive formats Unpack understands.
const (
	FormatZip   Format = "zip"
	FormatTarGz Format = "tar.gz"
	FormatTar   Format = "tar"
)

// Sniff tells the archive format from the first bytes of a file.
func Sniff(head []byte) (Format, error) {
	switch {
	case bytes.HasPrefix(head, []byte("PK\x03\x04")), bytes.HasPrefix(head, []byte("PK\x05\x06")):
		return FormatZip, nil
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return FormatTarGz, nil
	case len(head) >= 262 && string(head[257:262]) == "ustar":
		return FormatTar, nil
	}
	return "", reject("", "not a zip, tar.gz or tar archive (send a .zip, a .tar.gz or a directory)")
}

// Result describes an unpacked bundle.
type Result struct {
	// Root is the directory that holds the application: the destination,
	// or its only top-level folder when the archive wrapped everything in one.
	Root   string
	Files  int
	Bytes  int64
	Format Format
}

// UnpackFile unpacks the archive at src into dst, which must not exist yet or
// be empty. On error, dst may hold a partial tree; the caller removes it.
func UnpackFile(src, dst string, lim Limits) (*Result, error) {
	lim = lim.withDefaults()
	f, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	head := make([]byte, 512)
	n, _ := io.ReadFull(f, head)
	format, err := Sniff(head[:n])
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dst)
	if err != nil {
		return nil, err
	}
	defer root.Close()

	w := &writer{root: root, lim: lim, archiveBytes: max(st.Size(), 1)}
	switch format {
	case FormatZip:
		err = w.unzip(f, st.Size())
	case FormatTarGz:
		gz, gerr := gzip.NewReader(bufio.NewReader(f))
		if gerr != nil {
			return nil, reject("", "broken gzip stream: %v", gerr)
		}
		err = w.untar(gz)
	case FormatTar:
		err = w.untar(bufio.NewReader(f))
	}
	if err != nil {
		return nil, err
	}
	if w.files == 0 {
		return nil, reject("", "the archive is empty")
	}
	top, err := singleTopDir(dst)
	if err != nil {
		return nil, err
	}
	return &Result{Root: top, Files: w.files, Bytes: w.bytes, Format: format}, nil
}

// writer writes entries under root while counting against the limits.
type writer struct {
	root         *os.Root
	lim          Limits
	archiveBytes int64
	files        int
	bytes        int64
}

func (w *writer) unzip(f *os.File, size int64) error {
	zr, err := zip.NewReader(f, size)
	if err != nil {
		return reject("", "broken zip archive: %v", err)
	}
	for _, zf := range zr.File {
		name, err := cleanName(zf.Name)
		if err != nil {
			return err
		}
		if name == "" {
			continue
		}
		mode := zf.Mode()
		switch {
		case mode.IsDir():
			err = w.mkdir(name)
		case mode&fs.ModeSymlink != 0:
			err = w.zipSymlink(zf, name)
		case mode.IsRegular():
			err = w.zipFile(zf, name, mode)
		default:
			err = reject(zf.Name, "is a %s; only files, directories and symlinks are allowed", describeMode(mode))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (w *writer) zipFile(zf *zip.File, name string, mode fs.FileMode) error {
	rc, err := zf.Open()
	if err != nil {
		return reject(zf.Name, "cannot be read: %v", err)
	}
	defer rc.Close()
	return w.file(name, mode, rc)
}

func (w *writer) zipSymlink(zf *zip.File, name string) error {
	rc, err := zf.Open()
	if err != nil {
		return reject(zf.Name, "cannot be read: %v", err)
	}
	defer rc.Close()
	target, err := io.ReadAll(io.LimitReader(rc, 4096))
	if err != nil {
		return reject(zf.Name, "cannot be read: %v", err)
	}
	return w.symlink(name, string(target))
}

func (w *writer) untar(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return reject("", "broken tar archive: %v", err)
		}
		name, err := cleanName(h.Name)
		if err != nil {
			return err
		}
		if name == "" {
			continue
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = w.mkdir(name)
		case tar.TypeReg: // archive/tar reads old TypeRegA entries as TypeReg
			err = w.file(name, fs.FileMode(h.Mode)&fs.ModePerm, tr)
		case tar.TypeSymlink:
			err = w.symlink(name, h.Linkname)
		case tar.TypeXGlobalHeader, tar.TypeXHeader:
			continue
		case tar.TypeLink:
			err = reject(h.Name, "is a hard link; hard links are not allowed (store the file itself)")
		default:
			err = reject(h.Name, "is a %s; only files, directories and symlinks are allowed", describeTarType(h.Typeflag))
		}
		if err != nil {
			return err
		}
	}
}

func (w *writer) count(entry string) error {
	w.files++
	if w.files > w.lim.MaxFiles {
		return reject(entry, "the bundle has more than %d entries (limit bundle.max_files)", w.lim.MaxFiles)
	}
	return nil
}

func (w *writer) mkdir(name string) error {
	if err := w.count(name); err != nil {
		return err
	}
	return w.mkdirAll(name)
}

func (w *writer) mkdirAll(name string) error {
	if err := w.root.MkdirAll(name, 0o755); err != nil {
		return reject(name, "cannot create directory: %v", err)
	}
	return nil
}

func (w *writer) file(name string, mode fs.FileMode, r io.Reader) error {
	if err := w.count(name); err != nil {
		return err
	}
	if dir := path.Dir(name); dir != "." {
		if err := w.mkdirAll(dir); err != nil {
			return err
		}
	}
	perm := fs.FileMode(0o644)
	if mode&0o111 != 0 {
		perm = 0o755
	}
	out, err := w.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return reject(name, "cannot be written: %v", err)
	}
	defer out.Close()
	// Read one byte past the budget so that going over is seen.
	budget := w.lim.MaxBytes - w.bytes
	n, err := io.Copy(out, io.LimitReader(r, budget+1))
	w.bytes += n
	if err != nil {
		return reject(name, "cannot be unpacked: %v", err)
	}
	if w.bytes > w.lim.MaxBytes {
		return reject(name, "the bundle unpacks to more than %d bytes (limit bundle.max_bytes)", w.lim.MaxBytes)
	}
	if w.bytes > ratioFloor && w.bytes/w.archiveBytes > w.lim.MaxRatio {
		return reject(name, "the bundle expands more than %d times its compressed size, like a decompression bomb (limit bundle.max_ratio)", w.lim.MaxRatio)
	}
	return out.Close()
}

func (w *writer) symlink(name, target string) error {
	if err := w.count(name); err != nil {
		return err
	}
	if target == "" || path.IsAbs(target) || strings.Contains(target, "\\") {
		return reject(name, "is a symlink to %q; symlinks must point inside the bundle with a relative path", target)
	}
	resolved := path.Clean(path.Join(path.Dir(name), target))
	if resolved == ".." || strings.HasPrefix(resolved, "../") {
		return reject(name, "is a symlink to %q, which points outside the bundle", target)
	}
	if dir := path.Dir(name); dir != "." {
		if err := w.mkdirAll(dir); err != nil {
			return err
		}
	}
	if err := w.root.Symlink(target, name); err != nil {
		return reject(name, "cannot create symlink: %v", err)
	}
	return nil
}

// cleanName turns an archive entry name into a clean relative slash path,
// or refuses it. It returns "" for the root itself.
func cleanName(raw string) (string, error) {
	if strings.ContainsRune(raw, 0) {
		return "", reject(raw, "has a NUL byte in its name")
	}
	if strings.Contains(raw, "\\") {
		return "", reject(raw, "uses backslashes; archive paths must use forward slashes (re-create the zip with a tool that writes them)")
	}
	if path.IsAbs(raw) || filepath.VolumeName(raw) != "" {
		return "", reject(raw, "is an absolute path; bundle entries must be relative")
	}
	for _, part := range strings.Split(raw, "/") {
		if part == ".." {
			return "", reject(raw, "escapes the bundle with \"..\"")
		}
	}
	name := path.Clean(raw)
	if name == "." {
		return "", nil
	}
	return name, nil
}

// ignoredTopLevel are entries archivers add that do not count when deciding
// whether a bundle is wrapped in one folder.
var ignoredTopLevel = map[string]bool{"__MACOSX": true, ".DS_Store": true}

// singleTopDir returns dir's only subdirectory when that is all it holds
// (as with `zip -r app.zip app/`), else dir itself.
func singleTopDir(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var only fs.DirEntry
	for _, e := range entries {
		if ignoredTopLevel[e.Name()] {
			continue
		}
		if only != nil {
			return dir, nil
		}
		only = e
	}
	if only != nil && only.IsDir() {
		return filepath.Join(dir, only.Name()), nil
	}
	return dir, nil
}

func describeMode(m fs.FileMode) string {
	switch {
	case m&fs.ModeDevice != 0, m&fs.ModeCharDevice != 0:
		return "device file"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

func describeTarType(t byte) string {
	switch t {
	case tar.TypeChar, tar.TypeBlock:
		return "device file"
	case tar.TypeFifo:
		return "named pipe"
	}
	return fmt.Sprintf("tar entry of type %q", t)
}
