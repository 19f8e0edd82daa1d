package readmostly

import (
	"sync"
	"sync/atomic"
	"testing"
)

func TestGetCreatesOncePerKey(t *testing.T) {
	var m Map[*int]
	var created atomic.Int64
	create := func() *int { created.Add(1); return new(int) }
	var wg sync.WaitGroup
	got := make([]*int, 8)
	for i := range got {
		wg.Go(func() { got[i] = m.Get("a", create) })
	}
	wg.Wait()
	for _, p := range got {
		if p != got[0] {
			t.Fatal("Get returned different values for one key")
		}
	}
	if created.Load() != 1 {
		t.Errorf("create ran %d times, want 1", created.Load())
	}
	m.Delete("a")
	m.Delete("never there")
	if m.Get("a", create) == got[0] || created.Load() != 2 {
		t.Error("after Delete, Get returned the old value")
	}
}
