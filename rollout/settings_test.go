package rollout

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestBatchSizeFor(t *testing.T) {
	for _, c := range []struct {
		typ            BatchSizeType
		size, capacity int
		want           int
	}{
		{Percentage, 10, 4, 1}, // 0.4 rounds up to 1
		{Percentage, 25, 4, 1},
		{Percentage, 30, 4, 2}, // 1.2 rounds up to 2
		{Percentage, 50, 3, 2},
		{Percentage, 100, 4, 4},
		{Percentage, 1, 64, 1},
		{Percentage, 1, 1, 1},
		{Percentage, 99, 7, 7},
		{Fixed, 1, 4, 1},
		{Fixed, 3, 4, 3},
		{Fixed, 10, 4, 4}, // clamped to capacity
	} {
		s := Defaults()
		s.BatchSizeType, s.BatchSize = c.typ, c.size
		if got := s.BatchSizeFor(c.capacity); got != c.want {
			t.Errorf("%s %d of %d: batch of %d, want %d", c.typ, c.size, c.capacity, got, c.want)
		}
	}
}

func TestParse(t *testing.T) {
	for _, name := range []string{"AllAtOnce", "Rolling", "RollingWithAdditionalBatch", "Immutable", "TrafficSplitting"} {
		if p, err := ParsePolicy(name); err != nil || string(p) != name {
			t.Errorf("ParsePolicy(%q) = %q, %v", name, p, err)
		}
	}
	_, err := ParsePolicy("rolling")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "use AllAtOnce, Rolling, RollingWithAdditionalBatch, Immutable or TrafficSplitting") {
		t.Errorf("ParsePolicy(rolling): %v", err)
	}
	if typ, err := ParseBatchSizeType("Fixed"); err != nil || typ != Fixed {
		t.Errorf("ParseBatchSizeType(Fixed) = %q, %v", typ, err)
	}
	if _, err := ParseBatchSizeType("percent"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseBatchSizeType(percent): %v", err)
	}
}

func TestInvalidInputs(t *testing.T) {
	a1 := Instance{ID: "a1", Label: "v1", Healthy: true}
	for _, c := range []struct {
		name     string
		change   func(*Settings)
		current  []Instance
		capacity int
		want     string
	}{
		{"percentage 0", func(s *Settings) { s.BatchSize = 0 }, nil, 4, "batch size 0% is out of range: use a percentage from 1 to 100"},
		{"percentage 101", func(s *Settings) { s.BatchSize = 101 }, nil, 4, "batch size 101% is out of range: use a percentage from 1 to 100"},
		{"fixed 0", func(s *Settings) { s.BatchSizeType, s.BatchSize = Fixed, 0 }, nil, 4, "batch size 0 is out of range: use a fixed size of at least 1 instance"},
		{"fixed negative", func(s *Settings) { s.BatchSizeType, s.BatchSize = Fixed, -2 }, nil, 4, "batch size -2 is out of range"},
		{"unknown policy", func(s *Settings) { s.Policy = "BlueGreen" }, nil, 4, `unknown deployment policy "BlueGreen": use AllAtOnce`},
		{"no policy", func(s *Settings) { s.Policy = "" }, nil, 4, `unknown deployment policy ""`},
		{"unknown type", func(s *Settings) { s.BatchSizeType = "Half" }, nil, 4, `unknown batch size type "Half": use Percentage or Fixed`},
		{"canary 0", func(s *Settings) { s.NewVersionPercent = 0 }, nil, 4, "new version percent 0 is out of range: use a percentage from 1 to 100"},
		{"canary 101", func(s *Settings) { s.NewVersionPercent = 101 }, nil, 4, "new version percent 101 is out of range"},
		{"evaluation 0", func(s *Settings) { s.EvaluationTime = 0 }, nil, 4, "evaluation time 0s is too short: use a duration above 0, such as 5m"},
		{"evaluation negative", func(s *Settings) { s.EvaluationTime = -time.Second }, nil, 4, "evaluation time -1s is too short"},
		{"capacity 0", nil, nil, 0, "capacity 0 is out of range: an app runs from 1 to 64 instances"},
		{"capacity 65", nil, nil, 65, "capacity 65 is out of range"},
		{"no ID", nil, []Instance{{Label: "v1"}}, 1, "a current instance has no ID"},
		{"twice", nil, []Instance{a1, a1}, 1, "instance a1 is listed twice: list each current instance once"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := Defaults()
			if c.change != nil {
				c.change(&s)
			}
			_, derr := Deploy(s, "v2", c.current, c.capacity)
			_, serr := Scale(s, append(c.current, Instance{ID: "z9", Label: "v1"}), c.capacity)
			for _, err := range []error{derr, serr} {
				if !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
					t.Errorf("got %v, want an ErrInvalid starting %q", err, c.want)
				}
			}
		})
	}
	if _, err := Deploy(Defaults(), "", nil, 1); !errors.Is(err, ErrInvalid) {
		t.Errorf("Deploy without a label: %v", err)
	}
	if _, err := Scale(Defaults(), nil, 2); err == nil || err.Error() != "the app runs no instance: deploy a version before scaling it" {
		t.Errorf("Scale of nothing: %v", err)
	}
	mixed := []Instance{a1, {ID: "b1", Label: "v2"}}
	if _, err := Scale(Defaults(), mixed, 2); err == nil || err.Error() != "the app runs versions v1 and v2: finish or abort its rollout before scaling it" {
		t.Errorf("Scale of two versions: %v", err)
	}
}
