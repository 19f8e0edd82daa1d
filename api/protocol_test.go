package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sprout-paas/sprout/store"
	"github.com/sprout-paas/sprout/transport"
)

// serve runs h on a unix socket and returns a client of it.
func serve(t *testing.T, h http.Handler) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: h}}
	srv.Start()
	t.Cleanup(srv.Close)
	return NewClient(sock)
}

// TestProtocol: the CLI and the agent check each other's API version, and
// a mismatch says which side to upgrade.
func TestProtocol(t *testing.T) {
	s := &Server{version: "1.2.3", mux: http.NewServeMux()}
	var sent string
	s.mux.HandleFunc("GET /"+Version+"/agent", func(w http.ResponseWriter, r *http.Request) {
		sent = r.Header.Get(ProtocolHeader)
		writeJSON(w, 200, AgentInfo{Version: "1.2.3"})
	})
	if _, err := serve(t, s).Agent(context.Background()); err != nil || sent != strconv.Itoa(Protocol) {
		t.Errorf("same versions: %v, the client sent %q", err, sent)
	}

	// The agent refuses a client it does not speak, naming the side.
	for v, want := range map[string]string{
		strconv.Itoa(Protocol + 1):    "upgrade the agent",
		strconv.Itoa(MinProtocol - 1): "upgrade the CLI",
		"x":                           "not an API version",
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/"+Version+"/agent", nil)
		req.Header.Set(ProtocolHeader, v)
		s.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), want) || !strings.Contains(rec.Body.String(), `"incompatible": true`) {
			t.Errorf("client version %s: %d %s", v, rec.Code, rec.Body)
		}
		if rec.Header().Get(ProtocolHeader) != strconv.Itoa(Protocol) {
			t.Errorf("client version %s: the answer lacks the agent's version: %v", v, rec.Header())
		}
	}
	// A client from before the header: version 1.
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/"+Version+"/agent", nil))
	if rec.Code != 200 {
		t.Errorf("a client without the header: %d %s", rec.Code, rec.Body)
	}

	// The client refuses an agent it does not speak, and reads the agent's
	// refusal as ErrIncompatible.
	old := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(ProtocolHeader, strconv.Itoa(MinProtocol-1))
		writeJSON(w, 200, AgentInfo{})
	}))
	if _, err := old.Agent(context.Background()); !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "upgrade the agent") {
		t.Errorf("an older agent: %v", err)
	}
	newer := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(ProtocolHeader, strconv.Itoa(Protocol+1))
		writeJSON(w, http.StatusBadRequest, ErrorBody{Error: "upgrade the CLI", Incompatible: true})
	}))
	if _, err := newer.Agent(context.Background()); !errors.Is(err, ErrIncompatible) || err.Error() != "upgrade the CLI" {
		t.Errorf("a newer agent that refuses: %v", err)
	}
	unversioned := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, AgentInfo{})
	}))
	if _, err := unversioned.Agent(context.Background()); err != nil {
		t.Errorf("an agent from before the header: %v", err)
	}
}

// failing is a transport that cannot connect.
type failing struct{ err error }

func (f failing) Dial(context.Context) (net.Conn, error) { return nil, f.err }
func (f failing) String() string                         { return "ssh://web-1" }

// TestTransportErrorsReachTheUser: a transport's sentence is the error,
// not hidden behind the request's URL.
func TestTransportErrorsReachTheUser(t *testing.T) {
	want := &transport.Error{Kind: transport.ErrAuth, Msg: "ssh could not log in to web-1"}
	_, err := NewClientWith(failing{want}).Apps(context.Background())
	if err != want {
		t.Errorf("got %v, want %v", err, want)
	}
	_, err = NewClient(filepath.Join(t.TempDir(), "none.sock")).Apps(context.Background())
	if !errors.Is(err, ErrNoAgent) || strings.Contains(err.Error(), "http://") {
		t.Errorf("no agent: %v", err)
	}
}

// TestReadsWaitForTheHandOver: a read answered 503 with Retry-After (the
// agent hands over to a new process during an upgrade) is asked again
// until it is answered; a write is not, and says why.
func TestReadsWaitForTheHandOver(t *testing.T) {
	var n int
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n++; n <= 2 {
			writeError(w, store.ErrSuspended)
			return
		}
		writeJSON(w, 200, AgentInfo{Version: "v2"})
	})
	c := serve(t, h)
	if info, err := c.Agent(context.Background()); err != nil || info.Version != "v2" || n != 3 {
		t.Errorf("read during a hand-over: %+v, %v after %d requests", info, err, n)
	}
	n = 0
	_, err := c.Upgrade(context.Background(), false, 0, nil)
	if err == nil || !strings.Contains(err.Error(), "handing its state to a new agent process") || n != 1 {
		t.Errorf("write during a hand-over: %v after %d requests", err, n)
	}
}
