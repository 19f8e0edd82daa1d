package handover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/httpdrain"
)

// The tests start this test binary again as the successor; childMode
// says what it does then.
const childMode = "HANDOVER_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childMode); mode != "" {
		os.Exit(child(mode))
	}
	os.Exit(m.Run())
}

// child is a successor: it takes over the listeners named in
// HANDOVER_TEST_ADDRS and answers "child" on them, then, by mode, is
// ready, fails saying why, exits at once, or hangs.
func child(mode string) int {
	s, err := Inherit()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	switch mode {
	case "exit":
		return 3
	case "fail":
		s.Fail(errors.New("config proxy.bind_address: bad"))
		return 1
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "child")
	})}
	for _, addr := range strings.Fields(os.Getenv("HANDOVER_TEST_ADDRS")) {
		network, address, _ := strings.Cut(addr, "!")
		ln, err := s.Listen(network, address)
		if err != nil {
			s.Fail(err)
			return 1
		}
		go srv.Serve(ln)
	}
	if mode == "hang" {
		select {}
	}
	if err := s.Ready("v2"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	<-stop
	srv.Close()
	return 0
}

// start starts this test binary as a successor in mode, taking over
// addrs (network!addr).
func start(t *testing.T, s *Set, mode string, timeout time.Duration, addrs ...string) (*Successor, error) {
	t.Helper()
	t.Setenv(childMode, mode)
	t.Setenv("HANDOVER_TEST_ADDRS", strings.Join(addrs, " "))
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	succ, err := s.Start(StartOptions{Path: exe, Version: "v1", Timeout: timeout, Progress: func(l string) { lines = append(lines, l) }})
	if len(lines) == 0 || !strings.Contains(lines[0], fmt.Sprintf("with %d listening socket(s)", len(s.live))) {
		t.Errorf("progress = %q", lines)
	}
	if succ != nil {
		t.Cleanup(func() { stopProcess(succ.PID) })
	}
	return succ, err
}

// stopProcess sends SIGTERM to pid and waits until it is gone.
func stopProcess(pid int) {
	syscall.Kill(pid, syscall.SIGTERM)
	for range 500 {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func answer(client *http.Client, url string) (string, error) {
	resp, err := client.Post(url, "text/plain", strings.NewReader("ping"))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestHandOverUnderLoad serves a TCP port and a unix socket, starts a
// successor with both while clients keep opening connections, and stops
// accepting once it is ready: every request is answered, first by this
// process and then by the successor, and the socket file stays.
func TestHandOverUnderLoad(t *testing.T) {
	s, err := Inherit()
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := s.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	unixLn, err := s.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	// net/http's Shutdown would fail the requests of connections it
	// accepted a moment before; httpdrain lets them finish.
	srv := httpdrain.New(&http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "parent") })})
	go srv.Serve(tcp)
	go srv.Serve(unixLn)
	url := "http://" + tcp.Addr().String() + "/"

	// New connections all the time: no keep-alive, no retries.
	var ok, failed, fromChild atomic.Int64
	var firstErr atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			for ctx.Err() == nil {
				body, err := answer(client, url)
				switch {
				case err != nil:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				case body == "child":
					fromChild.Add(1)
					ok.Add(1)
				default:
					ok.Add(1)
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	succ, err := start(t, s, "ready", 10*time.Second, "tcp!127.0.0.1:0", "unix!"+sock)
	if err != nil {
		t.Fatal(err)
	}
	if succ.Version != "v2" || succ.PID == os.Getpid() {
		t.Errorf("successor = %+v", succ)
	}
	// The key is what was asked: 127.0.0.1:0 names the port this
	// process got, and the successor serves it.
	s.Release()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	srv.Drain(sctx, time.Second)
	time.Sleep(200 * time.Millisecond)
	cancel()
	for range 4 {
		<-done
	}
	if failed.Load() > 0 || fromChild.Load() == 0 {
		t.Errorf("%d answered (%d by the successor), %d failed (first: %v)", ok.Load(), fromChild.Load(), failed.Load(), firstErr.Load())
	}
	t.Logf("%d requests on new connections, %d answered by the successor", ok.Load(), fromChild.Load())

	// The socket file is the successor's now, and it answers on it.
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	if body, err := answer(client, "http://agent/"); err != nil || body != "child" {
		t.Errorf("on the socket: %q, %v", body, err)
	}
}

// TestFailedSuccessor: a successor that exits, says why it fails, or is
// never ready does not take over; this process keeps serving, and says
// why.
func TestFailedSuccessor(t *testing.T) {
	for _, tc := range []struct {
		mode    string
		timeout time.Duration
		want    []string
	}{
		{"exit", 10 * time.Second, []string{"exited with status 3 before it was ready", "its output is in this agent's log"}},
		{"fail", 10 * time.Second, []string{"exited with status 1 before it was ready: config proxy.bind_address: bad"}},
		{"hang", 500 * time.Millisecond, []string{"was not ready within 500ms, and was stopped"}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			s, _ := Inherit()
			ln, err := s.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "parent") })}
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })
			url := "http://" + ln.Addr().String() + "/"
			succ, err := start(t, s, tc.mode, tc.timeout, "tcp!127.0.0.1:0")
			if err == nil {
				t.Fatalf("successor %+v took over", succ)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			// Nothing of it is left serving: every request is ours.
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			for range 50 {
				if body, err := answer(client, url); err != nil || body != "parent" {
					t.Fatalf("after the failed start: %q, %v", body, err)
				}
			}
		})
	}
}

// TestClosedListenerRefuses: a listener closed is forgotten, so that its
// port refuses connections at once, before a hand-over and after a failed
// one (the Set keeps no duplicate that would leave it bound with an
// accept queue nobody serves).
func TestClosedListenerRefuses(t *testing.T) {
	s, _ := Inherit()
	refused := func(addr string) {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			t.Fatalf("%s still takes connections after its listener closed", addr)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial %s: %v, want connection refused", addr, err)
		}
	}
	a, _ := s.Listen("tcp", "127.0.0.1:0")
	a.Close()
	refused(a.Addr().String())

	b, _ := s.Listen("tcp", "127.0.0.1:0")
	if _, err := start(t, s, "exit", 10*time.Second, "tcp!127.0.0.1:0"); err == nil {
		t.Fatal("the successor took over")
	}
	b.Close()
	refused(b.Addr().String())
	if len(s.live) != 0 {
		t.Errorf("%d listeners left in the set", len(s.live))
	}
}

// TestNotReadyAcceptsNothing: a successor's listeners accept nothing
// before Ready, so that one that fails has taken no connection; a close
// meanwhile ends the wait.
func TestNotReadyAcceptsNothing(t *testing.T) {
	s := &Set{live: map[*listener]struct{}{}, ready: make(chan struct{})} // a successor's
	ln, err := s.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if c != nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String()) // queued by the kernel
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case err := <-accepted:
		t.Fatalf("accepted before Ready: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := s.Ready("v1"); err != nil {
		t.Fatal(err)
	}
	if err := <-accepted; err != nil {
		t.Fatalf("after Ready: %v", err)
	}

	waiting := &Set{live: map[*listener]struct{}{}, ready: make(chan struct{})}
	ln2, _ := waiting.Listen("tcp", "127.0.0.1:0")
	go func() { _, err := ln2.Accept(); accepted <- err }()
	ln2.Close()
	if err := <-accepted; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
	}
}

// TestFirstProcessIsReady: a process no upgrade started accepts at once,
// and may say it is ready.
func TestFirstProcessIsReady(t *testing.T) {
	s, err := Inherit()
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := s.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go net.Dial("tcp", ln.Addr().String())
	if c, err := ln.Accept(); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}
	if err := s.Ready("v1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.From(); ok {
		t.Error("a first process has a predecessor")
	}
}

// TestStoppedWhileStarting: a successor that is not ready when this
// process stops is killed.
func TestStoppedWhileStarting(t *testing.T) {
	s, _ := Inherit()
	ln, _ := s.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	t.Setenv(childMode, "hang")
	t.Setenv("HANDOVER_TEST_ADDRS", "tcp!127.0.0.1:0")
	exe, _ := os.Executable()
	stop := make(chan struct{})
	time.AfterFunc(200*time.Millisecond, func() { close(stop) })
	start := time.Now()
	_, err := s.Start(StartOptions{Path: exe, Timeout: time.Minute, Stop: stop})
	if err == nil || !strings.Contains(err.Error(), "stopped before it was ready: this agent is stopping") || time.Since(start) > 10*time.Second {
		t.Errorf("Start = %v after %s", err, time.Since(start))
	}
}
