package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// yourCert is a certificate you brought, with its key.
type yourCert struct {
	name  string
	names []string // DNS names, lowercase; "*.example.com" covers one label
	pair  tls.Certificate
	added time.Time
	err   string // why it is not served (a stored one that no longer loads)
}

// Files of a certificate you brought, in DataDir/tls/yours/<name>/.
const (
	certFile = "cert.pem"
	keyFile  = "key.pem"
)

// wildcardName stands for "*" in a certificate's name: "*.example.com" is
// named "_wildcard.example.com" (no host name has an underscore).
const wildcardName = "_wildcard"

// NameOf is the name under which a certificate for domain is listed, and
// removed with `sprout certs rm`.
func NameOf(domain string) string {
	d := strings.ToLower(strings.TrimSpace(domain))
	if rest, ok := strings.CutPrefix(d, "*."); ok {
		return wildcardName + "." + rest
	}
	return d
}

// parseYours checks a certificate and key you bring: PEM, matching, for
// DNS names, not expired.
func parseYours(certPEM, keyPEM []byte, now time.Time) (*yourCert, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: %v (give the certificate chain in PEM, leaf first, and its private key in PEM)", ErrInvalid, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("%w: the certificate does not parse: %v", ErrInvalid, err)
	}
	pair.Leaf = leaf
	if len(leaf.DNSNames) == 0 {
		return nil, fmt.Errorf("%w: the certificate names no DNS name (subjectAltName); clients ignore its common name %q: issue it with the domain as a SAN", ErrInvalid, leaf.Subject.CommonName)
	}
	names := make([]string, 0, len(leaf.DNSNames))
	for _, n := range leaf.DNSNames {
		n = strings.ToLower(n)
		if !validName(n) {
			return nil, fmt.Errorf("%w: the certificate's name %q is not a host name, or has a wildcard that is not its whole first label (*.example.com)", ErrInvalid, n)
		}
		names = append(names, n)
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("%w: the certificate for %s expired on %s: bring a current one", ErrInvalid, names[0], leaf.NotAfter.UTC().Format(time.DateTime))
	}
	return &yourCert{name: NameOf(names[0]), names: names, pair: pair, added: now}, nil
}

// validName tells a host name (letters, digits, hyphens, dots), with
// perhaps "*." before it: a name that is safe as a directory name too.
func validName(n string) bool {
	n = strings.TrimPrefix(n, "*.")
	if n == "" || len(n) > 253 || strings.HasPrefix(n, ".") || strings.HasSuffix(n, ".") || strings.Contains(n, "..") {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// covers tells whether the certificate is for host: one of its names, or
// a wildcard over host's first label.
func (y *yourCert) covers(host string) bool {
	if y.err != "" {
		return false
	}
	_, parent, _ := strings.Cut(host, ".")
	for _, n := range y.names {
		if n == host || (parent != "" && n == "*."+parent) {
			return true
		}
	}
	return false
}

// exact tells whether host is one of the certificate's names as written,
// which wins over a wildcard.
func (y *yourCert) exact(host string) bool {
	for _, n := range y.names {
		if n == host {
			return true
		}
	}
	return false
}

// info describes the certificate for List.
func (y *yourCert) info() Info {
	i := Info{Name: y.name, Domains: y.names, Issuer: IssuerYours, LastRenewal: y.added, Error: y.err}
	if y.pair.Leaf != nil {
		i.NotBefore, i.NotAfter = y.pair.Leaf.NotBefore, y.pair.Leaf.NotAfter
	}
	if i.Domains == nil {
		i.Domains = []string{}
	}
	return i
}

// Beside dir/<name>/ while it is replaced: the new pair is written into
// dir/.new.<name>/, the old one moved to dir/.old.<name>/, the new one
// moved in, the old one removed. Hidden, they are never loaded as
// certificates; recoverYours tidies what a crash left.
const (
	stagingPrefix = ".new."
	oldPrefix     = ".old."
)

// saveYours writes a certificate and key into dir/<name>/ (0700, files
// 0600), replacing an earlier one of that name whole. The caller
// serialises saves (Manager.changes); a crash part way leaves the old
// pair or the new one, which recoverYours puts right at the next load.
func saveYours(dir, name string, certPEM, keyPEM []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	final := filepath.Join(dir, name)
	staging := filepath.Join(dir, stagingPrefix+name)
	old := filepath.Join(dir, oldPrefix+name)
	if err := os.RemoveAll(staging); err != nil {
		return err
	}
	if err := os.Mkdir(staging, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(staging)
	if err := writeSynced(filepath.Join(staging, keyFile), keyPEM); err != nil {
		return err
	}
	if err := writeSynced(filepath.Join(staging, certFile), certPEM); err != nil {
		return err
	}
	if err := syncDir(staging); err != nil {
		return err
	}
	if err := os.RemoveAll(old); err != nil {
		return err
	}
	if err := os.Rename(final, old); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Rename(staging, final); err != nil {
		os.Rename(old, final) // put the old one back
		return err
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	return os.RemoveAll(old)
}

// writeSynced writes an owner-only file and flushes it to disk, so that
// a rename of its directory never publishes it half written.
func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncDir flushes a directory's entries (renames, new files) to disk.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// recoverYours puts right what a save cut short left in dir: an old pair
// moved aside with no new one in its place goes back (the save did not
// finish, so the old one stands); any other leftover is removed.
func recoverYours(dir string, log *slog.Logger) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if !e.IsDir() || !(strings.HasPrefix(n, stagingPrefix) || strings.HasPrefix(n, oldPrefix) || strings.HasPrefix(n, ".new-")) {
			continue
		}
		path := filepath.Join(dir, n)
		if name := movedAside(path, n); name != "" {
			final := filepath.Join(dir, name)
			if _, err := os.Stat(final); errors.Is(err, fs.ErrNotExist) {
				if err := os.Rename(path, final); err != nil {
					return err
				}
				log.Warn("a certificate of yours was being replaced when the agent stopped: the one it had is back; add the new one again", "name", name)
				continue
			}
		}
		if err := os.RemoveAll(path); err != nil {
			return err
		}
		log.Info("removed what an unfinished save of a certificate left", "dir", path)
	}
	return syncDir(dir)
}

// movedAside is the name of the certificate an old pair moved aside at
// path was stored under, or "" when entry is no such pair: .old.<name>,
// or .new-<random>.old as earlier versions named it (the name then read
// from its certificate).
func movedAside(path, entry string) string {
	if name, ok := strings.CutPrefix(entry, oldPrefix); ok {
		if validName(strings.TrimPrefix(name, wildcardName+".")) {
			return name
		}
		return ""
	}
	if !strings.HasSuffix(entry, ".old") {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(path, certFile))
	if err != nil {
		return ""
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return ""
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil || len(leaf.DNSNames) == 0 || !validName(strings.ToLower(leaf.DNSNames[0])) {
		return ""
	}
	return NameOf(leaf.DNSNames[0])
}

// loadYours reads every certificate in dir, after recoverYours. One that
// does not load is returned with why, so that List shows it rather than
// hiding it.
func loadYours(dir string, now time.Time, log *slog.Logger) (map[string]*yourCert, error) {
	out := map[string]*yourCert{}
	if err := recoverYours(dir, log); errors.Is(err, fs.ErrNotExist) {
		return out, nil
	} else if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		y, err := loadOne(filepath.Join(dir, e.Name()), now)
		if err != nil {
			y = &yourCert{name: e.Name(), err: err.Error()}
		}
		y.name = e.Name()
		out[y.name] = y
	}
	return out, nil
}

func loadOne(dir string, now time.Time) (*yourCert, error) {
	keyPEM, err := ReadKeyFile(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, certFile))
	if err != nil {
		return nil, err
	}
	y, err := parseYours(certPEM, keyPEM, now)
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(filepath.Join(dir, certFile)); err == nil {
		y.added = st.ModTime()
	}
	return y, nil
}

// ReadKeyFile reads a private key file, refusing one that users other
// than its owner may read: a key others can read is no longer private.
func ReadKeyFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if perm := st.Mode().Perm(); perm&0o044 != 0 {
		return nil, fmt.Errorf("%w: key file %s can be read by other users (mode %04o): run `chmod 600 %s`, and consider the key exposed if others could log in here", ErrInvalid, path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	return b, nil
}
