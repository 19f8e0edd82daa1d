package store

import (
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func TestStateSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := s.Meta("agent_id", func() string { return "abc" })
	if err := s.PutApp(&App{Name: "web", Port: 8080, Env: map[string]string{"A": "1"}, Serving: "v2"}); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"v1", "v2", "v3"} {
		if err := s.PutVersion(&Version{App: "web", Label: l, Status: StatusRetired, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Open(path); err == nil {
		t.Fatal("a second open of a locked state file succeeded")
	}
	s.Close()

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if id2, _ := s.Meta("agent_id", func() string { return "new" }); id2 != id {
		t.Errorf("agent id changed: %s -> %s", id, id2)
	}
	a, err := s.App("web")
	if err != nil || a.Port != 8080 || a.Env["A"] != "1" || a.Serving != "v2" {
		t.Fatalf("app = %+v, %v", a, err)
	}
	vs, _ := s.Versions("web")
	if len(vs) != 3 || vs[0].Label != "v3" || vs[2].Label != "v1" || vs[0].Seq != 3 {
		t.Errorf("versions not newest first: %+v", vs)
	}
	if s.NextSeq("web") != 4 || s.NextSeq("other") != 1 {
		t.Errorf("next seq = %d, %d", s.NextSeq("web"), s.NextSeq("other"))
	}
	if _, err := s.Version("web", "v9"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing version: %v", err)
	}
	if _, err := s.App("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing app: %v", err)
	}
}

func TestEventsAreBounded(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.maxEvents = 5
	for i := range 12 {
		app := "web"
		if i%2 == 1 {
			app = "api"
		}
		s.AddEvent(Event{App: app, Kind: "test", Message: string(rune('a' + i))})
	}
	all, _ := s.Events("", 100)
	if len(all) != 5 || all[0].Message != "h" || all[4].Message != "l" {
		t.Errorf("events = %+v", all)
	}
	web, _ := s.Events("web", 100)
	for _, e := range web {
		if e.App != "web" {
			t.Errorf("filter let %+v through", e)
		}
	}
}

// TestJournalsSurviveReopen: an interrupted rollout's journal is read
// back by the next agent, entries in order, until it is deleted.
func TestJournalsSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	j := &Journal{App: "web", Op: "deploy", Label: "v2", Started: time.Now()}
	for _, u := range []Undo{{Kind: UndoClose, Port: 8080}, {Kind: UndoRestart, Container: "c1", Routed: true, Label: "v1"}, {Kind: UndoRemove, Container: "sprout-web-v2-abc", Label: "v2"}} {
		j.Entries = append(j.Entries, u)
		if err := s.PutJournal(j); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if s, err = Open(path); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	js, err := s.Journals()
	if err != nil || len(js) != 1 {
		t.Fatalf("journals = %v, %v", js, err)
	}
	if got := js[0]; got.Op != "deploy" || len(got.Entries) != 3 || got.Entries[0].Kind != UndoClose || got.Entries[2].Container != "sprout-web-v2-abc" || !got.Entries[1].Routed {
		t.Errorf("journal read back = %+v", got)
	}
	if err := s.DeleteJournal("web"); err != nil {
		t.Fatal(err)
	}
	if js, _ := s.Journals(); len(js) != 0 {
		t.Errorf("journals after delete = %v", js)
	}
}

// TestSuspendHandsTheFileOver: a suspended store lets another process
// open the file (an agent's successor), refuses reads and writes meanwhile,
// and, resumed, sees what the other one wrote.
func TestSuspendHandsTheFileOver(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Suspend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apps(); !errors.Is(err, ErrSuspended) {
		t.Errorf("Apps while suspended: %v, want ErrSuspended", err)
	}
	if err := s.PutApp(&App{Name: "lost"}); !errors.Is(err, ErrSuspended) {
		t.Errorf("PutApp while suspended: %v, want ErrSuspended", err)
	}
	next, err := Open(path)
	if err != nil {
		t.Fatalf("the successor cannot open the file: %v", err)
	}
	if err := next.PutApp(&App{Name: "web", Port: 8080}); err != nil {
		t.Fatal(err)
	}
	if err := s.Resume(); err == nil {
		t.Fatal("resumed while the successor holds the file")
	}
	next.Close()
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	if a, err := s.App("web"); err != nil || a.Port != 8080 {
		t.Errorf("after Resume: %+v, %v", a, err)
	}
}
