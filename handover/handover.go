// Package handover passes a process's listening sockets, open, to its
// successor, so that the agent can be upgraded without a gap: it starts
// the binary now at its path with every listener it serves as an
// inherited file descriptor, waits until the new process says it is
// ready, and only then stops accepting. The sockets themselves never
// close, so no connection is refused, and none queued in a listener's
// accept queue is lost (as with SO_REUSEPORT, where closing the old
// listener drops the connections queued on it).
//
// This is how cloudflare/tableflip hands listeners over (inherited file
// descriptors, named in the environment, and a pipe on which the new
// process says it is ready). The agent does not use tableflip itself
// because it keeps a duplicate of every listener it ever saw until the
// process upgrades, with no way to forget one: the port of an app the
// agent removed would stay bound, with an accept queue nobody serves, so
// that connections to it hang instead of being refused. Here a listener
// the process closes is forgotten at once. The new process also says why
// it failed, when it can, and the old one reports it.
package handover

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// EnvVar is the environment variable that tells a process that its
// predecessor started it and which descriptors it inherits.
const EnvVar = "SPROUT_HANDOVER"

// Set is the listeners a process serves: those it inherited from its
// predecessor, taken by Listen, and those it opened itself. It hands them
// all to a successor (Start).
type Set struct {
	mu   sync.Mutex
	live map[*listener]struct{}
	// inherited are the predecessor's listeners not taken yet.
	inherited []inheritedFile
	// ready is closed once the process serves: until then, the
	// listeners accept nothing, so that a process that fails to start
	// has taken no connection from its predecessor.
	ready     chan struct{}
	readyOnce sync.Once
	// control is the pipe to the predecessor, nil once it was told, or
	// in a first process.
	control *os.File
	from    Predecessor
}

// Predecessor is the process that started this one, when one did.
type Predecessor struct {
	PID     int    `json:"pid"`
	Version string `json:"version"`
}

// key names a listener by what was asked of Listen.
type key struct{ network, addr string }

type inheritedFile struct {
	key
	f *os.File
}

// env is what EnvVar holds.
type env struct {
	From      Predecessor `json:"from"`
	Control   int         `json:"control"`
	Listeners []passed    `json:"listeners"`
}

type passed struct {
	FD      int    `json:"fd"`
	Network string `json:"network"`
	Addr    string `json:"addr"`
}

// Inherit returns the process's Set: with the listeners its predecessor
// passed when one started it (EnvVar is set), else empty and ready.
// EnvVar is removed from the environment, so that the processes this one
// starts do not see it.
func Inherit() (*Set, error) {
	s := &Set{live: map[*listener]struct{}{}, ready: make(chan struct{})}
	raw, ok := os.LookupEnv(EnvVar)
	if !ok {
		s.open()
		return s, nil
	}
	os.Unsetenv(EnvVar)
	var e env
	if err := json.Unmarshal([]byte(raw), &e); err != nil {
		s.open()
		return s, fmt.Errorf("%s: %w (it is set by an agent starting its successor, not by hand)", EnvVar, err)
	}
	unix.CloseOnExec(e.Control)
	s.control = os.NewFile(uintptr(e.Control), "handover")
	for _, p := range e.Listeners {
		unix.CloseOnExec(p.FD)
		s.inherited = append(s.inherited, inheritedFile{key{p.Network, p.Addr}, os.NewFile(uintptr(p.FD), p.Network+":"+p.Addr)})
	}
	s.from = e.From
	return s, nil
}

// From is the process that started this one; ok is false for a first
// process.
func (s *Set) From() (p Predecessor, ok bool) { return s.from, s.from.PID != 0 }

// Inherits tells whether Listen(network, addr) takes a listener the
// predecessor passed.
func (s *Set) Inherits(network, addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.find(key{network, addr}) >= 0
}

func (s *Set) find(k key) int {
	for i, in := range s.inherited {
		if in.key == k {
			return i
		}
	}
	return -1
}

// Listen returns the listener on addr that the predecessor passed, or a
// new one (net.Listen). Until Ready, it accepts nothing. Closing it
// closes the socket for good: the Set forgets it.
func (s *Set) Listen(network, addr string) (net.Listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key{network, addr}
	var ln net.Listener
	if i := s.find(k); i >= 0 {
		f := s.inherited[i].f
		s.inherited = append(s.inherited[:i], s.inherited[i+1:]...)
		var err error
		ln, err = net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("take over the %s listener on %s: %w", network, addr, err)
		}
		if ul, ok := ln.(*net.UnixListener); ok {
			// A taken-over socket file is this process's to remove
			// when it stops for good (net.FileListener leaves it).
			ul.SetUnlinkOnClose(true)
		}
	} else {
		var err error
		if ln, err = net.Listen(network, addr); err != nil {
			return nil, err
		}
	}
	l := &listener{Listener: ln, set: s, key: k, closed: make(chan struct{})}
	s.live[l] = struct{}{}
	return l, nil
}

// Ready says that this process serves: its listeners start accepting,
// the inherited ones it did not take are closed, and the predecessor
// (if any) is told, with version, so that it stops accepting.
func (s *Set) Ready(version string) error {
	s.open()
	return s.tell(report{PID: os.Getpid(), Version: version})
}

// open lets the listeners accept, and closes the inherited ones not taken.
func (s *Set) open() {
	s.readyOnce.Do(func() {
		s.mu.Lock()
		for _, in := range s.inherited {
			if in.network == "unix" {
				// Nobody serves this socket file any more.
				removeSocket(in.addr)
			}
			in.f.Close()
		}
		s.inherited = nil
		s.mu.Unlock()
		close(s.ready)
	})
}

// Fail tells the predecessor, if any and if Ready was not called, why
// this process cannot take over.
func (s *Set) Fail(err error) {
	s.tell(report{Error: err.Error()})
}

// report is what a new process tells its predecessor, on one line.
type report struct {
	PID     int    `json:"pid,omitempty"`
	Version string `json:"version,omitempty"`
	Error   string `json:"error,omitempty"`
}

// tell sends r to the predecessor, once.
func (s *Set) tell(r report) error {
	s.mu.Lock()
	c := s.control
	s.control = nil
	s.mu.Unlock()
	if c == nil {
		return nil
	}
	defer c.Close()
	b, _ := json.Marshal(r)
	if _, err := c.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("tell the agent that started this one (pid %d): %w", s.from.PID, err)
	}
	return nil
}

// Release is called once a successor serves: closing this process's unix
// listeners then leaves their socket files, which are the successor's.
func (s *Set) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for l := range s.live {
		if ul, ok := l.Listener.(*net.UnixListener); ok {
			ul.SetUnlinkOnClose(false)
		}
	}
}

// forget drops a closed listener.
func (s *Set) forget(l *listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.live, l)
}

// removeSocket removes a unix socket file, and nothing else.
func removeSocket(path string) {
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
}

// listener is a listener of a Set.
type listener struct {
	net.Listener
	set    *Set
	key    key
	once   sync.Once
	closed chan struct{}
}

// Accept waits until the process is ready, then accepts.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case <-l.set.ready:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	return l.Listener.Accept()
}

// Close closes the socket (in this process) and forgets it, so that it
// is not passed to a successor.
func (l *listener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.set.forget(l)
	})
	return l.Listener.Close()
}
