package agent

import (
	"slices"
	"sync"
	"testing"

	"github.com/sprout-paas/sprout/proxy"
)

// orderCerts records the sets it is told to manage, in order; the first
// Manage call runs first before it records.
type orderCerts struct {
	proxy.Certificates // never called
	mu                 sync.Mutex
	told               [][]string
	first              func()
}

func (c *orderCerts) Manage(domains []string) {
	if f := c.first; f != nil {
		c.first = nil
		f()
	}
	c.mu.Lock()
	c.told = append(c.told, slices.Clone(domains))
	c.mu.Unlock()
}

// TestManageCertsTellsTheNewestSetLast: when the domains served change
// while the set computed before is being handed over, the newer set is
// handed over after it, never before. The first hand-over is held while a
// second change runs as far as it can.
func TestManageCertsTellsTheNewestSetLast(t *testing.T) {
	certs := &orderCerts{}
	a := &Agent{certs: certs, served: map[string][]string{"web": {"web.example"}}}
	secondDone, secondWaits := make(chan struct{}), make(chan struct{}, 1)
	testHookCertsBusy = func() { secondWaits <- struct{}{} }
	t.Cleanup(func() { testHookCertsBusy = nil })
	certs.first = func() {
		a.mu.Lock()
		a.served["shop"] = []string{"shop.example"}
		a.mu.Unlock()
		go func() { a.manageCerts(); close(secondDone) }()
		select {
		case <-secondWaits: // it waits for this one
		case <-secondDone: // it went past this one
		}
	}
	a.manageCerts()
	<-secondDone
	certs.mu.Lock()
	defer certs.mu.Unlock()
	if n := len(certs.told); n == 0 || !slices.Equal(certs.told[n-1], []string{"shop.example", "web.example"}) {
		t.Errorf("told %v; the last must be the newest set", certs.told)
	}
}
