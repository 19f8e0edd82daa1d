package bundle

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type entry struct {
	name string
	body string
	mode fs.FileMode // 0 means a regular 0644 file
	link string
	size int64 // zeros to write instead of body, for bombs
	typ  byte  // tar type override
}

func makeZip(t testing.TB, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		h := &zip.FileHeader{Name: e.name, Method: zip.Deflate}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		h.SetMode(mode)
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case e.link != "":
			w.Write([]byte(e.link))
		case e.size > 0:
			chunk := make([]byte, 1<<20)
			for left := e.size; left > 0; left -= int64(len(chunk)) {
				w.Write(chunk[:min(left, int64(len(chunk)))])
			}
		default:
			w.Write([]byte(e.body))
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func makeTarGz(t testing.TB, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e.body))}
		if e.typ != 0 {
			h.Typeflag = e.typ
			h.Size = 0
			h.Linkname = e.link
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

func unpackBytes(t *testing.T, data []byte, lim Limits) (*Result, string, error) {
	t.Helper()
	tmp := t.TempDir()
	src := filepath.Join(tmp, "bundle")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(tmp, "out")
	res, err := UnpackFile(src, dst, lim)
	return res, tmp, err
}

func TestUnpackRejects(t *testing.T) {
	cases := []struct {
		name    string
		archive func(t testing.TB) []byte
		lim     Limits
		want    string
	}{
		{"dot-dot in zip", func(t testing.TB) []byte {
			return makeZip(t, []entry{{name: "Dockerfile", body: "FROM scratch"}, {name: "../evil", body: "x"}})
		}, Limits{}, `escapes the bundle`},
		{"dot-dot in the middle", func(t testing.TB) []byte {
			return makeZip(t, []entry{{name: "a/../../evil", body: "x"}})
		}, Limits{}, `escapes the bundle`},
		{"absolute path in tar", func(t testing.TB) []byte {
			return makeTarGz(t, []entry{{name: "/etc/evil", body: "x"}})
		}, Limits{}, `absolute path`},
		{"symlink pointing out", func(t testing.TB) []byte {
			return makeZip(t, []entry{{name: "link", mode: fs.ModeSymlink | 0o777, link: "../../etc/passwd"}})
		}, Limits{}, `points outside the bundle`},
		{"absolute symlink in tar", func(t testing.TB) []byte {
			return makeTarGz(t, []entry{{name: "link", typ: tar.TypeSymlink, link: "/etc/passwd"}})
		}, Limits{}, `relative path`},
		{"device file", func(t testing.TB) []byte {
			return makeTarGz(t, []entry{{name: "dev", typ: tar.TypeChar}})
		}, Limits{}, `device file`},
		{"fifo", func(t testing.TB) []byte {
			return makeTarGz(t, []entry{{name: "pipe", typ: tar.TypeFifo}})
		}, Limits{}, `named pipe`},
		{"hard link", func(t testing.TB) []byte {
			return makeTarGz(t, []entry{{name: "a", body: "x"}, {name: "b", typ: tar.TypeLink, link: "a"}})
		}, Limits{}, `hard link`},
		{"too many files", func(t testing.TB) []byte {
			return makeZip(t, []entry{{name: "a", body: "1"}, {name: "b", body: "2"}, {name: "c", body: "3"}})
		}, Limits{MaxFiles: 2}, `more than 2 entries`},
		{"too many bytes", func(t testing.TB) []byte {
			return makeZip(t, []entry{{name: "a", body: strings.Repeat("x", 100)}})
		}, Limits{MaxBytes: 99}, `more than 99 bytes`},
		{"bomb", func(t testing.TB) []byte {
			return makeZip(t, []entry{{name: "zeros", size: 64 << 20}})
		}, Limits{}, `decompression bomb`},
		{"not an archive", func(t testing.TB) []byte {
			return []byte("hello, this is not a zip")
		}, Limits{}, `not a zip, tar.gz or tar archive`},
		{"empty zip", func(t testing.TB) []byte { return makeZip(t, nil) }, Limits{}, `empty`},
		{"backslash", func(t testing.TB) []byte {
			return makeZip(t, []entry{{name: `app\Dockerfile`, body: "x"}})
		}, Limits{}, `backslashes`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, tmp, err := unpackBytes(t, tc.archive(t), tc.lim)
			if err == nil {
				t.Fatalf("unpack succeeded, want error containing %q", tc.want)
			}
			if !errors.Is(err, ErrRejected) {
				t.Errorf("error %v does not wrap ErrRejected", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			assertNothingOutside(t, tmp)
		})
	}
}

// assertNothingOutside checks that only the archive and the out directory
// exist in tmp, and that the filesystem root has no "evil" file.
func assertNothingOutside(t *testing.T, tmp string) {
	t.Helper()
	entries, _ := os.ReadDir(tmp)
	for _, e := range entries {
		if e.Name() != "bundle" && e.Name() != "out" {
			t.Errorf("unexpected file %s next to the destination", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(tmp), "evil")); err == nil {
		t.Errorf("a file escaped the destination")
	}
}

func TestUnpackAccepts(t *testing.T) {
	t.Run("zip with single top folder is rooted there", func(t *testing.T) {
		data := makeZip(t, []entry{
			{name: "app/", mode: fs.ModeDir | 0o755},
			{name: "app/Dockerfile", body: "FROM scratch\n"},
			{name: "app/bin/run", body: "#!/bin/sh\n", mode: 0o755},
			{name: "app/cur", mode: fs.ModeSymlink | 0o777, link: "bin/run"},
			{name: "__MACOSX/._app", body: "junk"},
		})
		res, _, err := unpackBytes(t, data, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(res.Root) != "app" {
			t.Errorf("root = %s, want the app folder", res.Root)
		}
		b, err := os.ReadFile(filepath.Join(res.Root, "Dockerfile"))
		if err != nil || string(b) != "FROM scratch\n" {
			t.Errorf("Dockerfile = %q, %v", b, err)
		}
		st, err := os.Stat(filepath.Join(res.Root, "bin/run"))
		if err != nil || st.Mode()&0o111 == 0 {
			t.Errorf("bin/run lost its executable bit: %v %v", st, err)
		}
		if res.Format != FormatZip || res.Files != 5 {
			t.Errorf("result = %+v", res)
		}
	})
	t.Run("tar.gz at root", func(t *testing.T) {
		data := makeTarGz(t, []entry{{name: "./Dockerfile", body: "FROM scratch\n"}, {name: "app", body: "bin"}})
		res, tmp, err := unpackBytes(t, data, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Root != filepath.Join(tmp, "out") {
			t.Errorf("root = %s", res.Root)
		}
	})
	t.Run("a highly compressible small bundle is fine", func(t *testing.T) {
		data := makeZip(t, []entry{{name: "zeros", size: 4 << 20}})
		if _, _, err := unpackBytes(t, data, Limits{}); err != nil {
			t.Fatal(err)
		}
	})
}

func TestPackRoundTrip(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "Dockerfile"), []byte("FROM scratch\n"), 0o644)
	os.MkdirAll(filepath.Join(src, ".git/objects"), 0o755)
	os.WriteFile(filepath.Join(src, ".git/HEAD"), []byte("ref"), 0o644)
	os.MkdirAll(filepath.Join(src, "static"), 0o755)
	os.WriteFile(filepath.Join(src, "static/run.sh"), []byte("#!/bin/sh"), 0o755)
	var buf bytes.Buffer
	if err := Pack(src, &buf); err != nil {
		t.Fatal(err)
	}
	res, _, err := unpackBytes(t, buf.Bytes(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(res.Root, ".git")); err == nil {
		t.Error(".git was packed")
	}
	if st, err := os.Stat(filepath.Join(res.Root, "static/run.sh")); err != nil || st.Mode()&0o111 == 0 {
		t.Errorf("static/run.sh: %v %v", st, err)
	}
	if res.Format != FormatTarGz {
		t.Errorf("format = %s", res.Format)
	}
}

// FuzzUnpack feeds arbitrary bytes to the unpacker: it must never panic,
// never write outside its destination, and only fail with ErrRejected.
func FuzzUnpack(f *testing.F) {
	f.Add(makeZip(f, []entry{{name: "Dockerfile", body: "FROM scratch"}}))
	f.Add(makeZip(f, []entry{{name: "../x", body: "x"}}))
	f.Add(makeZip(f, []entry{{name: "l", mode: fs.ModeSymlink | 0o777, link: "../../x"}}))
	f.Add(makeTarGz(f, []entry{{name: "a/b/c", body: "x"}, {name: "d", typ: tar.TypeSymlink, link: "a/b"}}))
	f.Add(makeTarGz(f, []entry{{name: "d", typ: tar.TypeSymlink, link: "."}, {name: "d/../../x", body: "x"}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		tmp := t.TempDir()
		src := filepath.Join(tmp, "bundle")
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := UnpackFile(src, filepath.Join(tmp, "out"), Limits{MaxFiles: 100, MaxBytes: 1 << 20})
		if err != nil && !errors.Is(err, ErrRejected) {
			t.Fatalf("error does not wrap ErrRejected: %v", err)
		}
		assertNothingOutside(t, tmp)
	})
}
