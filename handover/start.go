package handover

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Successor is the process Start started, once it serves.
type Successor struct {
	PID     int
	Version string
}

// StartOptions say what Start starts.
type StartOptions struct {
	// Path is the binary to start, Args its arguments (without the
	// program name, which is this process's).
	Path string
	Args []string
	// Version is this process's, for the successor's log.
	Version string
	// Timeout bounds the wait for the successor to be ready; it is
	// killed beyond.
	Timeout time.Duration
	// Progress, when set, hears what happens.
	Progress func(line string)
	// Stop, when closed before the successor is ready, kills it: this
	// process is stopping.
	Stop <-chan struct{}
}

// Start starts a successor with every listener of s and this process's
// environment, standard output and error, and waits until it is ready
// (it called Ready), fails (it called Fail or exited), or opts.Timeout
// passes, when it is killed. Until then this process serves as before;
// after a success, both accept on the same sockets until this one closes
// its listeners (after Release). A successor that failed has taken no
// connection, and the listeners of s are as they were.
func (s *Set) Start(opts StartOptions) (*Successor, error) {
	say := func(format string, args ...any) {
		if opts.Progress != nil {
			opts.Progress(fmt.Sprintf(format, args...))
		}
	}
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	files, e, err := s.pass(wr)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if err != nil {
		return nil, err
	}
	e.From = Predecessor{PID: os.Getpid(), Version: opts.Version}
	raw, _ := json.Marshal(e)
	cmd := exec.Command(opts.Path, opts.Args...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(withoutHandover(os.Environ()), EnvVar+"="+string(raw))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start %s: %w", opts.Path, err)
	}
	for _, f := range files {
		f.Close() // the child has them now
	}
	files = nil
	pid := cmd.Process.Pid
	say("started %s (pid %d) with %d listening socket(s)", opts.Path, pid, len(e.Listeners))

	reports := make(chan report, 1)
	go func() {
		var r report
		line, err := bufio.NewReader(rd).ReadBytes('\n')
		if err == nil {
			if jerr := json.Unmarshal(line, &r); jerr != nil {
				r.Error = fmt.Sprintf("it said something this agent does not understand: %q", strings.TrimSpace(string(line)))
			}
		}
		reports <- r
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	timer := time.NewTimer(opts.Timeout)
	defer timer.Stop()
	name := fmt.Sprintf("the new agent (pid %d)", pid)
	select {
	case r := <-reports:
		if r.Error == "" && r.PID != 0 {
			return &Successor{PID: r.PID, Version: r.Version}, nil
		}
		// It failed, or closed the pipe: it exits, or is made to.
		select {
		case err := <-exited:
			return nil, failure(name, err, r.Error)
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			return nil, failure(name, <-exited, r.Error)
		}
	case err := <-exited:
		// What it said before it went, if anything.
		var r report
		select {
		case r = <-reports:
		case <-time.After(time.Second):
		}
		return nil, failure(name, err, r.Error)
	case <-timer.C:
		cmd.Process.Kill()
		<-exited
		return nil, fmt.Errorf("%s was not ready within %s, and was stopped", name, opts.Timeout)
	case <-opts.Stop:
		cmd.Process.Kill()
		<-exited
		return nil, fmt.Errorf("%s was stopped before it was ready: this agent is stopping", name)
	}
}

// failure says why a successor did not take over: how it exited and what
// it said.
func failure(name string, exit error, said string) error {
	how := "exited before it was ready"
	var ee *exec.ExitError
	if errors.As(exit, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			how = fmt.Sprintf("was killed by signal %s before it was ready", ws.Signal())
		} else {
			how = fmt.Sprintf("exited with status %d before it was ready", ee.ExitCode())
		}
	}
	if said == "" {
		return fmt.Errorf("%s %s (its output is in this agent's log)", name, how)
	}
	return fmt.Errorf("%s %s: %s", name, how, said)
}

// pass duplicates the control pipe's end and every live listener as the
// successor's files, in the order of its descriptors from 3 on.
func (s *Set) pass(control *os.File) ([]*os.File, env, error) {
	files := []*os.File{control}
	e := env{Control: 3}
	s.mu.Lock()
	defer s.mu.Unlock()
	for l := range s.live {
		f, err := dup(l.Listener, l.key.network+":"+l.key.addr)
		if err != nil {
			return files, e, fmt.Errorf("pass the %s listener on %s: %w", l.key.network, l.key.addr, err)
		}
		e.Listeners = append(e.Listeners, passed{FD: 3 + len(files), Network: l.key.network, Addr: l.key.addr})
		files = append(files, f)
	}
	return files, e, nil
}

// dup duplicates a listener's descriptor, without changing the original
// (net's File would make it blocking).
func dup(ln net.Listener, name string) (*os.File, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("%T has no file descriptor", ln)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	var derr error
	if err := raw.Control(func(orig uintptr) { fd, derr = unix.FcntlInt(orig, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(fd), name), nil
}

func withoutHandover(environ []string) []string {
	out := environ[:0:0]
	for _, kv := range environ {
		if !strings.HasPrefix(kv, EnvVar+"=") {
			out = append(out, kv)
		}
	}
	return out
}
