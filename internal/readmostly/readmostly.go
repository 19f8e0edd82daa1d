// Package readmostly holds a map that the request path reads without a
// lock: a read is an atomic load and a look-up, and a write, which is
// rare, copies the map under a lock and swaps it in.
package readmostly

import (
	"maps"
	"sync"
	"sync/atomic"
)

// Map maps strings to values. The zero Map is empty and ready to use.
type Map[V any] struct {
	mu sync.Mutex
	m  atomic.Pointer[map[string]V]
}

// Get returns key's value, calling create for it on its first use. create
// runs under the map's lock, once per key until the key is deleted.
func (m *Map[V]) Get(key string, create func() V) V {
	if p := m.m.Load(); p != nil {
		if v, ok := (*p)[key]; ok {
			return v
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var cur map[string]V
	if p := m.m.Load(); p != nil {
		cur = *p
	}
	if v, ok := cur[key]; ok {
		return v
	}
	v := create()
	next := maps.Clone(cur)
	if next == nil {
		next = map[string]V{}
	}
	next[key] = v
	m.m.Store(&next)
	return v
}

// Delete removes key: the next Get of it creates a new value. A value
// returned before stays with whoever holds it.
func (m *Map[V]) Delete(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.m.Load()
	if p == nil {
		return
	}
	if _, ok := (*p)[key]; !ok {
		return
	}
	next := maps.Clone(*p)
	delete(next, key)
	m.m.Store(&next)
}
