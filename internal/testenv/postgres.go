package testenv

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PG is a throwaway PostgreSQL server.
type PG struct {
	// Host is the host's address on the Docker bridge (DockerBridge),
	// where containers reach the server; the host reaches it there and
	// on 127.0.0.1.
	Host     string
	Port     int
	User     string
	Password string
	DB       string
}

// URL is the server's postgres:// URL, as `sprout setenv --rds` takes it.
func (p PG) URL() string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(p.User, p.Password), Host: net.JoinHostPort(p.Host, strconv.Itoa(p.Port)), Path: "/" + p.DB}
	return u.String()
}

// Query runs one SQL statement with psql and returns its unaligned output.
func (p PG) Query(t testing.TB, sql string) string {
	t.Helper()
	cmd := exec.Command("psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", strconv.Itoa(p.Port), "-U", p.User, "-d", p.DB, "-c", sql)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+p.Password)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql %q: %v\n%s", sql, err, out)
	}
	return strings.TrimSpace(string(out))
}

// Postgres starts a PostgreSQL server from Debian's packages for one
// test, listening on loopback and on the host's address on the Docker
// bridge (so that containers reach it, as an app reaches RDS), with
// password auth and a database named ebdb, as Elastic Beanstalk names it.
// It stops when the test ends. Without the server package the test is
// skipped, except under CI, where it fails.
func Postgres(t testing.TB) PG {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(bins) == 0 {
		Missing(t, "PostgreSQL is not installed", "scripts/ensure-test-deps.sh installs it as root: apt-get install postgresql")
	}
	slices.Sort(bins)
	bin := filepath.Dir(bins[len(bins)-1])
	br := DockerBridge(t)
	pg := PG{Host: br.Gateway.String(), Port: FreePort(t), User: "sprout", Password: "p@ss:w/rd%" + Name("x"), DB: "ebdb"}

	dir, err := os.MkdirTemp("", "sprout-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// PostgreSQL refuses to run as root: run it as the package's user.
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs the postgres user of Debian's package: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		os.Chmod(dir, 0o755)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	run := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = dir
		return cmd
	}
	pwfile := filepath.Join(dir, "pw")
	os.WriteFile(pwfile, []byte(pg.Password+"\n"), 0o644)
	data := filepath.Join(dir, "data")
	if out, err := run("initdb", "-D", data, "-U", pg.User, "--pwfile", pwfile, "--auth", "scram-sha-256", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	hba := fmt.Sprintf("host all all %s scram-sha-256\n", br.Subnet)
	f, err := os.OpenFile(filepath.Join(data, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(hba)
	f.Close()
	srv := run("postgres", "-D", data, "-p", strconv.Itoa(pg.Port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1,"+pg.Host, "-c", "fsync=off", "-c", "synchronous_commit=off")
	logf := &SyncBuffer{}
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// SIGINT is PostgreSQL's fast shutdown.
		srv.Process.Signal(os.Interrupt)
		srv.Wait()
		if t.Failed() {
			t.Logf("postgres log:\n%s", logf)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(pg.Port)), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres did not start: %v\n%s", err, logf)
		}
		time.Sleep(100 * time.Millisecond)
	}
	db := pg.DB
	pg.DB = "postgres"
	for i := 0; ; i++ {
		cmd := exec.Command("psql", "-X", "-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port), "-U", pg.User, "-d", "postgres", "-c", "CREATE DATABASE "+db)
		cmd.Env = append(os.Environ(), "PGPASSWORD="+pg.Password)
		out, err := cmd.CombinedOutput()
		if err == nil {
			break
		}
		if i > 50 { // "the database system is starting up"
			t.Fatalf("create database: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pg.DB = db
	return pg
}

// BaseImage makes sure the engine has debian:bookworm-slim, which
// scripts/base-image.sh makes (`make test` runs it). Without it the test
// is skipped, except under CI, where it fails.
func BaseImage(t testing.TB) {
	t.Helper()
	if err := exec.Command("docker", "image", "inspect", "debian:bookworm-slim").Run(); err != nil {
		Missing(t, "the engine has no debian:bookworm-slim image", "scripts/base-image.sh makes it as root")
	}
}
