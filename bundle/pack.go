package bundle

import (
	"archive/tar"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// skipDirs are directories that never belong in a bundle made from a
// working copy.
var skipDirs = map[string]bool{".git": true, ".hg": true, ".svn": true}

// Pack writes dir as a gzipped tar to w: regular files, directories and
// symlinks, with paths relative to dir. Version-control folders are left out.
func Pack(dir string, w io.Writer) error {
	// Fast compression: bundles are mostly sent to a nearby agent, where
	// CPU time matters more than bytes.
	gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	err := WriteTar(dir, gz, func(rel string, isDir bool) bool {
		return isDir && skipDirs[filepath.Base(rel)]
	})
	if err != nil {
		return err
	}
	return gz.Close()
}

// WriteTar writes dir as an uncompressed tar to w, leaving out what skip
// says (rel is slash-separated and relative to dir). A skipped directory is
// left out whole.
func WriteTar(dir string, w io.Writer, skip func(rel string, isDir bool) bool) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		if skip != nil && skip(filepath.ToSlash(rel), d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		case info.IsDir(), info.Mode().IsRegular():
		default:
			return fmt.Errorf("%s: only files, directories and symlinks can be deployed", p)
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
