package rollout

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Instance is one instance of an app as the planner sees it.
type Instance struct {
	ID string
	// Label is the version the instance runs.
	Label string
	// Healthy says whether the instance passes its health check; an
	// unhealthy one is out of the rotation and serves nothing.
	Healthy   bool
	StartedAt time.Time
}

// Op names one of the primitives a step runs.
type Op string

// The primitives. The instances a start step starts are the ones the
// following wait-healthy and route steps of the same batch act on.
const (
	// OpStart starts N instances of Label, out of the rotation.
	OpStart Op = "start"
	// OpWaitHealthy waits until the batch's started instances are healthy.
	OpWaitHealthy Op = "wait_healthy"
	// OpRoute puts the batch's started instances in the rotation and sets
	// the share of requests for Label (see Step.Percent).
	OpRoute Op = "route"
	// OpEvaluate keeps the routing as it is for the step's For, while the
	// new version's requests are compared with the old version's.
	OpEvaluate Op = "evaluate"
	// OpDrain takes IDs out of the rotation and waits for their requests
	// in flight.
	OpDrain Op = "drain"
	// OpRetire stops and removes IDs; they were drained first.
	OpRetire Op = "retire"
)

// Step is one primitive with its arguments; fields another Op does not
// use are zero.
type Step struct {
	Op Op `json:"op"`
	// N is how many instances OpStart starts.
	N int `json:"n,omitempty"`
	// Label is the version OpStart starts or OpRoute routes to.
	Label string `json:"label,omitempty"`
	// Percent is OpRoute's share of requests for Label's instances, from 1
	// to 100 (100 takes every other version out of the rotation); 0 means
	// by count: every instance in the rotation takes an equal share.
	Percent int `json:"percent,omitempty"`
	// For is how long OpEvaluate lasts.
	For time.Duration `json:"for,omitempty"`
	// IDs are the instances OpDrain or OpRetire act on.
	IDs []string `json:"ids,omitempty"`
}

// Batch is a health-gated group of steps, run in order.
type Batch struct {
	Steps []Step `json:"steps"`
}

// Plan is what a rollout will do, computed before it runs.
type Plan struct {
	Settings Settings `json:"settings"`
	// Label is the version the plan starts: the new version of a deploy,
	// the running one of a scale.
	Label string `json:"label"`
	// Scale is set on a plan that changes the count, not the version.
	Scale bool `json:"scale,omitempty"`
	// From is how many instances run before; To, after.
	From int `json:"from"`
	To   int `json:"to"`
	// BatchSize is the batch size the plan uses: under a rolling policy
	// the most instances a batch starts or retires; otherwise all the
	// instances the plan starts (or, scaling down, retires) at once.
	BatchSize int `json:"batch_size"`
	// Notes say, for people, where the plan differs from what the policy
	// would do on Elastic Beanstalk.
	Notes   []string `json:"notes,omitempty"`
	Batches []Batch  `json:"batches"`
}

// Deploy plans the move of an app from its current instances to capacity
// instances of label: it starts capacity instances and retires every
// current one, in retireOrder. Under a rolling policy an app that grows
// first starts its extra instances, and one that shrinks retires its
// surplus in the last batches, so capacity stays as high as it can. With
// no current instance every policy starts all at once.
func Deploy(s Settings, label string, current []Instance, capacity int) (Plan, error) {
	if err := check(s, current, capacity); err != nil {
		return Plan{}, err
	}
	if label == "" {
		return Plan{}, invalid("the new version has no label: give it one")
	}
	p := Plan{Settings: s, Label: label, From: len(current), To: capacity, BatchSize: capacity}
	old := retireOrder(current)
	switch {
	case len(old) == 0:
		p.add(startAll(label, capacity, 100))
		if s.Policy != AllAtOnce && s.Policy != Immutable {
			p.Notes = append(p.Notes, fmt.Sprintf("no instance runs yet: all %d start in one batch", capacity))
		}
	case s.rolling():
		p.BatchSize = s.BatchSizeFor(capacity)
		p.grow(capacity - len(old))
		p.replace(old)
	case s.Policy == TrafficSplitting && slices.ContainsFunc(old, func(in Instance) bool { return in.Healthy }):
		b := startAll(label, capacity, s.NewVersionPercent)
		b.Steps = append(b.Steps, Step{Op: OpEvaluate, For: s.EvaluationTime})
		p.add(b)
		p.add(Batch{Steps: append([]Step{{Op: OpRoute, Label: label, Percent: 100}}, retire(old)...)})
	default: // AllAtOnce, Immutable, and TrafficSplitting with nothing to compare
		if s.Policy == TrafficSplitting {
			p.Notes = append(p.Notes, fmt.Sprintf("no instance of the old version is healthy, so nothing to compare %s with: it takes all traffic at once", label))
		}
		b := startAll(label, capacity, 100)
		b.Steps = append(b.Steps, retire(old)...)
		p.add(b)
	}
	return p, nil
}

// Scale plans a change of the app's instance count to capacity, on the
// version it runs. Growing starts the new instances in batches of the
// batch size under a rolling policy, at once otherwise, each batch health-
// gated. Shrinking drains and retires the surplus in one batch, chosen in
// retireOrder.
func Scale(s Settings, current []Instance, capacity int) (Plan, error) {
	if err := check(s, current, capacity); err != nil {
		return Plan{}, err
	}
	if len(current) == 0 {
		return Plan{}, invalid("the app runs no instance: deploy a version before scaling it")
	}
	label := current[0].Label
	for _, in := range current {
		if in.Label != label {
			return Plan{}, invalid("the app runs versions %s and %s: finish or abort its rollout before scaling it", label, in.Label)
		}
	}
	p := Plan{Settings: s, Label: label, Scale: true, From: len(current), To: capacity}
	switch n := capacity - len(current); {
	case n > 0:
		p.BatchSize = n
		if s.rolling() {
			p.BatchSize = min(n, s.BatchSizeFor(capacity))
		}
		p.grow(n)
	case n < 0:
		p.BatchSize = -n
		p.add(Batch{Steps: retire(retireOrder(current)[:-n])})
	default:
		p.Notes = append(p.Notes, fmt.Sprintf("the app already runs %s: nothing to do", instances(capacity)))
	}
	return p, nil
}

// check validates what Deploy and Scale share.
func check(s Settings, current []Instance, capacity int) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if capacity < 1 || capacity > MaxInstances {
		return invalid("capacity %d is out of range: an app runs from 1 to %d instances", capacity, MaxInstances)
	}
	seen := make(map[string]bool, len(current))
	for _, in := range current {
		if in.ID == "" {
			return invalid("a current instance has no ID: give each instance its container's ID")
		}
		if seen[in.ID] {
			return invalid("instance %s is listed twice: list each current instance once", in.ID)
		}
		seen[in.ID] = true
	}
	return nil
}

// retireOrder returns the instances in the order they retire: unhealthy
// ones first, as they serve nothing, then the longest-running, then by ID.
func retireOrder(current []Instance) []Instance {
	out := slices.Clone(current)
	slices.SortStableFunc(out, func(a, b Instance) int {
		if a.Healthy != b.Healthy {
			if a.Healthy {
				return 1
			}
			return -1
		}
		return cmp.Or(a.StartedAt.Compare(b.StartedAt), strings.Compare(a.ID, b.ID))
	})
	return out
}

// grow adds batches that start n instances, BatchSize at a time.
func (p *Plan) grow(n int) {
	for n > 0 {
		k := min(n, p.BatchSize)
		p.add(startAll(p.Label, k, 0))
		n -= k
	}
}

// replace adds the batches that retire old, BatchSize at a time, each
// starting as many new instances until To have started in all. A Rolling
// batch drains first, unless it would retire every instance still
// serving; then, like every RollingWithAdditionalBatch batch, it starts
// beside the old ones first.
func (p *Plan) replace(old []Instance) {
	serving := p.started() // grown so far, healthy once routed
	for _, in := range old {
		if in.Healthy {
			serving++
		}
	}
	for i := 0; i < len(old); i += p.BatchSize {
		batch := old[i:min(i+p.BatchSize, len(old))]
		healthy := 0
		for _, in := range batch {
			if in.Healthy {
				healthy++
			}
		}
		k := min(len(batch), p.To-p.started())
		var start []Step
		if k > 0 {
			start = startAll(p.Label, k, 0).Steps
		}
		beside := p.Settings.Policy == Rolling && healthy > 0 && healthy >= serving
		if beside || p.Settings.Policy == RollingWithAdditionalBatch {
			p.add(Batch{Steps: append(start, retire(batch)...)})
		} else {
			p.add(Batch{Steps: append(retire(batch), start...)})
		}
		switch {
		case beside && len(old) == 1:
			p.Notes = append(p.Notes, "an app of 1 instance cannot drop a batch without downtime: each batch starts beside the old one")
		case beside:
			p.Notes = append(p.Notes, fmt.Sprintf("a batch that retires every serving instance (%d) would cause downtime: batch %d starts beside the old ones", serving, len(p.Batches)))
		}
		serving += k - healthy
	}
}

// started counts the instances the plan's batches start so far.
func (p *Plan) started() int {
	n := 0
	for _, b := range p.Batches {
		for _, st := range b.Steps {
			n += st.N
		}
	}
	return n
}

func (p *Plan) add(b Batch) { p.Batches = append(p.Batches, b) }

// startAll is a batch that starts n instances of label, waits until they
// are healthy and routes percent of requests to label (0: by count).
func startAll(label string, n, percent int) Batch {
	return Batch{Steps: []Step{
		{Op: OpStart, N: n, Label: label},
		{Op: OpWaitHealthy},
		{Op: OpRoute, Label: label, Percent: percent},
	}}
}

// retire drains the instances, then retires them.
func retire(old []Instance) []Step {
	ids := make([]string, len(old))
	for i, in := range old {
		ids[i] = in.ID
	}
	return []Step{{Op: OpDrain, IDs: ids}, {Op: OpRetire, IDs: slices.Clone(ids)}}
}

// String prints the step, e.g. "start 2 of v2" or "route 10% to v2".
func (st Step) String() string {
	switch st.Op {
	case OpStart:
		return fmt.Sprintf("start %d of %s", st.N, st.Label)
	case OpWaitHealthy:
		return "wait healthy"
	case OpRoute:
		if st.Percent == 0 {
			return "route"
		}
		return fmt.Sprintf("route %d%% to %s", st.Percent, st.Label)
	case OpEvaluate:
		return "evaluate for " + st.For.String()
	default: // OpDrain, OpRetire
		return string(st.Op) + " " + strings.Join(st.IDs, ", ")
	}
}

// String prints the steps separated by "; ", a drain and the retirement
// of the same instances as one: "drain and retire a1; start 1 of v2".
func (b Batch) String() string {
	var parts []string
	for i := 0; i < len(b.Steps); i++ {
		st := b.Steps[i]
		if st.Op == OpDrain && i+1 < len(b.Steps) && b.Steps[i+1].Op == OpRetire && slices.Equal(st.IDs, b.Steps[i+1].IDs) {
			parts = append(parts, "drain and retire "+strings.Join(st.IDs, ", "))
			i++
			continue
		}
		parts = append(parts, st.String())
	}
	return strings.Join(parts, "; ")
}

// String prints the plan for people: a line that says what and how, the
// notes, then a line per batch.
func (p Plan) String() string {
	what := fmt.Sprintf("deploy %s to %s, replacing %d", p.Label, instances(p.To), p.From)
	if p.Scale {
		what = fmt.Sprintf("scale %s from %d to %s", p.Label, p.From, instances(p.To))
	}
	var how string
	switch s := p.Settings; {
	case s.Policy == TrafficSplitting && !p.Scale && len(p.Batches) == 2:
		how = fmt.Sprintf("%d%% of requests to %s for %s, then all", s.NewVersionPercent, p.Label, s.EvaluationTime)
	case len(p.Batches) == 0:
		how = "nothing to do"
	case len(p.Batches) == 1:
		how = "one batch"
	case s.BatchSizeType == Percentage:
		how = fmt.Sprintf("batches of %d (%d%% of %d)", p.BatchSize, s.BatchSize, p.To)
	default:
		how = fmt.Sprintf("batches of %d (fixed)", p.BatchSize)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s, %s: %s", p.Settings.Policy, how, what)
	for _, n := range p.Notes {
		fmt.Fprintf(&b, "\n  note: %s", n)
	}
	for i, bt := range p.Batches {
		fmt.Fprintf(&b, "\n  batch %d/%d: %s", i+1, len(p.Batches), bt)
	}
	return b.String()
}

// instances says "1 instance" or "n instances".
func instances(n int) string {
	if n == 1 {
		return "1 instance"
	}
	return fmt.Sprintf("%d instances", n)
}
