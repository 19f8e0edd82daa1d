package rollout

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

var policies = []Policy{AllAtOnce, Rolling, RollingWithAdditionalBatch, Immutable, TrafficSplitting}

// app returns m healthy instances of v1, a1 the oldest.
func app(m int) []Instance {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	out := make([]Instance, m)
	for i := range out {
		out[i] = Instance{ID: fmt.Sprintf("a%d", i+1), Label: "v1", Healthy: true, StartedAt: t0.Add(time.Duration(i) * time.Minute)}
	}
	return out
}

func settings(p Policy, typ BatchSizeType, size int) Settings {
	s := Defaults()
	s.Policy, s.BatchSizeType, s.BatchSize = p, typ, size
	return s
}

// simulate runs the plan against a model of the host and checks what must
// hold at every step and at the end. An old instance serves while it is
// healthy and in the rotation; a new one once routed.
func simulate(p Plan, current []Instance) error {
	type state struct{ serving, drained, retired bool }
	old := map[string]*state{}
	for _, in := range current {
		old[in.ID] = &state{serving: in.Healthy}
	}
	pending, ready, routed, started := 0, 0, 0, 0
	serving := func() int {
		n := routed
		for _, s := range old {
			if s.serving {
				n++
			}
		}
		return n
	}
	// Rolling may drop one batch below the target; nothing else drops
	// below it. Where it started lower, nothing drops below the start.
	floor := p.To
	if p.Settings.Policy == Rolling && !p.Scale {
		floor = p.To - p.BatchSize
	}
	start := serving()
	floor = min(floor, start)
	was := start
	for bi, b := range p.Batches {
		where := func(st Step) string { return fmt.Sprintf("batch %d, %s", bi+1, st) }
		for _, st := range b.Steps {
			switch st.Op {
			case OpStart:
				if st.N < 1 || st.Label != p.Label {
					return fmt.Errorf("%s: starts %d of %q", where(st), st.N, st.Label)
				}
				pending += st.N
				started += st.N
			case OpWaitHealthy:
				if pending == 0 {
					return fmt.Errorf("%s: nothing to wait for", where(st))
				}
				ready, pending = ready+pending, 0
			case OpRoute:
				if pending > 0 || st.Percent < 0 || st.Percent > 100 {
					return fmt.Errorf("%s: routes before the wait or out of range", where(st))
				}
				routed, ready = routed+ready, 0
				if st.Percent == 100 {
					for _, s := range old {
						s.serving = false
					}
				}
			case OpEvaluate:
				// The old version takes the rest of the requests, unless
				// the new one takes them all.
				oldServes := serving() > routed || p.Settings.NewVersionPercent == 100
				if st.For <= 0 || routed == 0 || !oldServes {
					return fmt.Errorf("%s: nothing to compare", where(st))
				}
			case OpDrain, OpRetire:
				for _, id := range st.IDs {
					s := old[id]
					switch {
					case s == nil:
						return fmt.Errorf("%s: %s is not an old instance", where(st), id)
					case st.Op == OpDrain && s.drained, st.Op == OpRetire && s.retired:
						return fmt.Errorf("%s: %s twice", where(st), id)
					case st.Op == OpRetire && !s.drained:
						return fmt.Errorf("%s: %s retired before its drain", where(st), id)
					}
					s.serving = false
					s.drained = true
					s.retired = st.Op == OpRetire
				}
			default:
				return fmt.Errorf("%s: unknown op", where(st))
			}
			now := serving()
			if now < was && now < floor {
				return fmt.Errorf("%s: %d serving, below %d", where(st), now, floor)
			}
			if now == 0 && (was > 0 || start > 0) {
				return fmt.Errorf("%s: nothing serving", where(st))
			}
			was = now
		}
		if pending+ready > 0 {
			return fmt.Errorf("batch %d ends with %d instances out of the rotation", bi+1, pending+ready)
		}
	}
	wantStarted, wantRetired := p.To, len(current)
	if p.Scale {
		wantStarted, wantRetired = max(p.To-p.From, 0), max(p.From-p.To, 0)
	}
	retired := 0
	for _, s := range old {
		if s.retired {
			retired++
		}
	}
	if started != wantStarted || retired != wantRetired {
		return fmt.Errorf("started %d and retired %d, want %d and %d", started, retired, wantStarted, wantRetired)
	}
	if left := routed + len(current) - retired; left != p.To {
		return fmt.Errorf("ends with %d instances, want %d", left, p.To)
	}
	for _, b := range p.Batches {
		for _, st := range b.Steps {
			if st.N > p.BatchSize || len(st.IDs) > p.BatchSize && p.Settings.rolling() && !p.Scale {
				return fmt.Errorf("a batch larger than %d: %s", p.BatchSize, b)
			}
		}
	}
	return nil
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// TestDeployEveryPolicy covers every policy and capacity with batch sizes
// that round to 0, that fit, and that exceed the capacity, with as many
// old instances as new, and fewer, and more.
func TestDeployEveryPolicy(t *testing.T) {
	sizes := []struct {
		typ  BatchSizeType
		size int
	}{{Percentage, 10}, {Percentage, 25}, {Percentage, 30}, {Percentage, 50}, {Percentage, 100}, {Fixed, 1}, {Fixed, 2}, {Fixed, 3}, {Fixed, 10}}
	for _, pol := range policies {
		for _, n := range []int{1, 2, 3, 4, 5, 7} {
			for _, m := range []int{0, 1, n, n + 2} {
				for _, sz := range sizes {
					s := settings(pol, sz.typ, sz.size)
					name := fmt.Sprintf("%s/%d->%d/%s%d", pol, m, n, sz.typ, sz.size)
					p, err := Deploy(s, "v2", app(m), n)
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					if err := simulate(p, app(m)); err != nil {
						t.Errorf("%s: %v\n%s", name, err, p)
					}
					b := s.BatchSizeFor(n)
					want := 1
					switch {
					case m == 0:
					case pol == Rolling || pol == RollingWithAdditionalBatch:
						want = ceilDiv(max(n-m, 0), b) + ceilDiv(m, b)
					case pol == TrafficSplitting:
						want = 2
					}
					if len(p.Batches) != want {
						t.Errorf("%s: %d batches, want %d\n%s", name, len(p.Batches), want, p)
					}
					beside := pol == Rolling && m == 1 && n == 1
					if has := slices.Contains(p.Notes, "an app of 1 instance cannot drop a batch without downtime: each batch starts beside the old one"); has != beside {
						t.Errorf("%s: single-instance note %v, want %v\n%s", name, has, beside, p)
					}
				}
			}
		}
	}
}

func TestScaleEveryPolicy(t *testing.T) {
	for _, pol := range policies {
		for _, m := range []int{1, 2, 3, 4, 5, 7} {
			for _, n := range []int{1, 2, 3, 4, 5, 7} {
				for _, sz := range []int{10, 30, 100} {
					s := settings(pol, Percentage, sz)
					p, err := Scale(s, app(m), n)
					if err != nil {
						t.Fatal(err)
					}
					if err := simulate(p, app(m)); err != nil {
						t.Errorf("%s %d->%d %d%%: %v\n%s", pol, m, n, sz, err, p)
					}
					want := min(abs(n-m), 1)
					if n > m && s.rolling() {
						want = ceilDiv(n-m, s.BatchSizeFor(n))
					}
					if len(p.Batches) != want {
						t.Errorf("%s %d->%d %d%%: %d batches, want %d\n%s", pol, m, n, sz, len(p.Batches), want, p)
					}
				}
			}
		}
	}
}

func abs(n int) int { return max(n, -n) }

// TestRandomPlans checks the invariants over many random apps: mixed
// health, start times and ID orders, any policy, batch size and count.
func TestRandomPlans(t *testing.T) {
	r := rand.New(rand.NewPCG(10, 2025))
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 20000 {
		s := settings(policies[r.IntN(len(policies))], Percentage, 1+r.IntN(100))
		if r.IntN(2) == 0 {
			s.BatchSizeType, s.BatchSize = Fixed, 1+r.IntN(12)
		}
		s.NewVersionPercent = 1 + r.IntN(100)
		current := make([]Instance, r.IntN(12))
		for j := range current {
			current[j] = Instance{ID: fmt.Sprintf("i%02d", r.IntN(1000)*100+j), Label: "v1", Healthy: r.IntN(4) > 0, StartedAt: t0.Add(time.Duration(r.IntN(5)) * time.Hour)}
		}
		n := 1 + r.IntN(12)
		p, err := Deploy(s, "v2", current, n)
		if err == nil {
			err = simulate(p, current)
		}
		if err != nil {
			t.Fatalf("case %d: deploy of %+v to %d with %+v: %v\n%s", i, current, n, s, err, p)
		}
		if len(current) == 0 {
			continue
		}
		p, err = Scale(s, current, n)
		if err == nil {
			err = simulate(p, current)
		}
		if err != nil {
			t.Fatalf("case %d: scale of %+v to %d with %+v: %v\n%s", i, current, n, s, err, p)
		}
	}
}

func TestRetireOrder(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	current := []Instance{
		{ID: "c", Label: "v1", Healthy: true, StartedAt: t0.Add(time.Hour)},
		{ID: "b", Label: "v1", Healthy: true, StartedAt: t0},
		{ID: "a", Label: "v1", Healthy: true, StartedAt: t0.Add(time.Hour)},
		{ID: "z", Label: "v1", Healthy: false, StartedAt: t0.Add(2 * time.Hour)},
	}
	p, err := Deploy(settings(Rolling, Fixed, 1), "v2", current, 4)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, b := range p.Batches {
		for _, st := range b.Steps {
			if st.Op == OpRetire {
				order = append(order, st.IDs...)
			}
		}
	}
	if want := []string{"z", "b", "a", "c"}; !slices.Equal(order, want) {
		t.Errorf("retire order %v, want %v", order, want)
	}
	p, err = Scale(Defaults(), current, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Batches[0].Steps[1].IDs; !slices.Equal(got, []string{"z", "b"}) {
		t.Errorf("scale down retires %v, want [z b]", got)
	}
}

func TestPlanString(t *testing.T) {
	twoUnhealthy := app(3)
	twoUnhealthy[0].Healthy, twoUnhealthy[1].Healthy = false, false
	for _, c := range []struct {
		name string
		plan func() (Plan, error)
		want string
	}{
		{"rolling 25% of 4", func() (Plan, error) { return Deploy(settings(Rolling, Percentage, 25), "v2", app(4), 4) }, `
Rolling, batches of 1 (25% of 4): deploy v2 to 4 instances, replacing 4
  batch 1/4: drain and retire a1; start 1 of v2; wait healthy; route
  batch 2/4: drain and retire a2; start 1 of v2; wait healthy; route
  batch 3/4: drain and retire a3; start 1 of v2; wait healthy; route
  batch 4/4: drain and retire a4; start 1 of v2; wait healthy; route`},
		{"rolling on one instance", func() (Plan, error) { return Deploy(settings(Rolling, Percentage, 100), "v2", app(1), 1) }, `
Rolling, one batch: deploy v2 to 1 instance, replacing 1
  note: an app of 1 instance cannot drop a batch without downtime: each batch starts beside the old one
  batch 1/1: start 1 of v2; wait healthy; route; drain and retire a1`},
		{"rolling 100% of 3, one serving", func() (Plan, error) { return Deploy(settings(Rolling, Percentage, 100), "v2", twoUnhealthy, 3) }, `
Rolling, one batch: deploy v2 to 3 instances, replacing 3
  note: a batch that retires every serving instance (1) would cause downtime: batch 1 starts beside the old ones
  batch 1/1: start 3 of v2; wait healthy; route; drain and retire a1, a2, a3`},
		{"rolling 30% of 4 from 5", func() (Plan, error) { return Deploy(settings(Rolling, Percentage, 30), "v2", app(5), 4) }, `
Rolling, batches of 2 (30% of 4): deploy v2 to 4 instances, replacing 5
  batch 1/3: drain and retire a1, a2; start 2 of v2; wait healthy; route
  batch 2/3: drain and retire a3, a4; start 2 of v2; wait healthy; route
  batch 3/3: drain and retire a5`},
		{"additional batch, fixed 2, from 2 to 3", func() (Plan, error) { return Deploy(settings(RollingWithAdditionalBatch, Fixed, 2), "v2", app(2), 3) }, `
RollingWithAdditionalBatch, batches of 2 (fixed): deploy v2 to 3 instances, replacing 2
  batch 1/2: start 1 of v2; wait healthy; route
  batch 2/2: start 2 of v2; wait healthy; route; drain and retire a1, a2`},
		{"immutable", func() (Plan, error) { return Deploy(settings(Immutable, Percentage, 100), "v2", app(2), 2) }, `
Immutable, one batch: deploy v2 to 2 instances, replacing 2
  batch 1/1: start 2 of v2; wait healthy; route 100% to v2; drain and retire a1, a2`},
		{"traffic splitting", func() (Plan, error) { return Deploy(settings(TrafficSplitting, Percentage, 100), "v2", app(4), 4) }, `
TrafficSplitting, 10% of requests to v2 for 5m0s, then all: deploy v2 to 4 instances, replacing 4
  batch 1/2: start 4 of v2; wait healthy; route 10% to v2; evaluate for 5m0s
  batch 2/2: route 100% to v2; drain and retire a1, a2, a3, a4`},
		{"traffic splitting with nothing healthy", func() (Plan, error) {
			sick := app(1)
			sick[0].Healthy = false
			return Deploy(settings(TrafficSplitting, Percentage, 100), "v2", sick, 2)
		}, `
TrafficSplitting, one batch: deploy v2 to 2 instances, replacing 1
  note: no instance of the old version is healthy, so nothing to compare v2 with: it takes all traffic at once
  batch 1/1: start 2 of v2; wait healthy; route 100% to v2; drain and retire a1`},
		{"first deploy", func() (Plan, error) { return Deploy(settings(TrafficSplitting, Percentage, 100), "v1", nil, 3) }, `
TrafficSplitting, one batch: deploy v1 to 3 instances, replacing 0
  note: no instance runs yet: all 3 start in one batch
  batch 1/1: start 3 of v1; wait healthy; route 100% to v1`},
		{"scale up rolling", func() (Plan, error) { return Scale(settings(Rolling, Percentage, 25), app(2), 7) }, `
Rolling, batches of 2 (25% of 7): scale v1 from 2 to 7 instances
  batch 1/3: start 2 of v1; wait healthy; route
  batch 2/3: start 2 of v1; wait healthy; route
  batch 3/3: start 1 of v1; wait healthy; route`},
		{"scale down", func() (Plan, error) { return Scale(Defaults(), app(4), 1) }, `
AllAtOnce, one batch: scale v1 from 4 to 1 instance
  batch 1/1: drain and retire a1, a2, a3`},
		{"scale to the same", func() (Plan, error) { return Scale(Defaults(), app(2), 2) }, `
AllAtOnce, nothing to do: scale v1 from 2 to 2 instances
  note: the app already runs 2 instances: nothing to do`},
	} {
		p, err := c.plan()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got, want := p.String(), strings.TrimPrefix(c.want, "\n"); got != want {
			t.Errorf("%s:\ngot:\n%s\nwant:\n%s", c.name, got, want)
		}
	}
}
