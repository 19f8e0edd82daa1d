package rollout

import (
	"errors"
	"fmt"
	"time"
)

// Policy is an Elastic Beanstalk deployment policy, spelled as Elastic
// Beanstalk spells it.
type Policy string

// The policies. On one host none of them has downtime: every policy that
// Elastic Beanstalk runs by stopping instances first starts the new ones
// beside the old ones here instead.
const (
	// AllAtOnce starts every new instance beside the old ones, waits until
	// all are healthy, switches all traffic, then drains and retires the
	// old ones. (Elastic Beanstalk stops the old ones first.)
	AllAtOnce Policy = "AllAtOnce"
	// Rolling replaces old instances by new ones a batch at a time: drain
	// and retire a batch of old ones, start as many new ones, wait until
	// they are healthy, route to them. Capacity drops by at most a batch.
	Rolling Policy = "Rolling"
	// RollingWithAdditionalBatch is Rolling with each batch started beside
	// the old instances before any is retired, so capacity never drops.
	RollingWithAdditionalBatch Policy = "RollingWithAdditionalBatch"
	// Immutable starts a complete new set beside the old one, waits until
	// it is healthy, switches all traffic, then drains and retires the old
	// set. On one host it plans the same steps as AllAtOnce.
	Immutable Policy = "Immutable"
	// TrafficSplitting starts a complete new set as Immutable does, sends
	// it NewVersionPercent of requests for EvaluationTime, then switches
	// all traffic and retires the old set.
	TrafficSplitting Policy = "TrafficSplitting"
)

// BatchSizeType says how Settings.BatchSize counts instances.
type BatchSizeType string

const (
	// Percentage is a percentage of the app's desired instance count,
	// rounded up.
	Percentage BatchSizeType = "Percentage"
	// Fixed is a number of instances.
	Fixed BatchSizeType = "Fixed"
)

// Elastic Beanstalk's defaults, and the most instances an app may run.
const (
	DefaultBatchSize         = 100
	DefaultNewVersionPercent = 10
	DefaultEvaluationTime    = 5 * time.Minute
	MaxInstances             = 64
)

// ErrInvalid matches (with errors.Is) every error about a bad input. The
// error's text is one sentence that names the fix.
var ErrInvalid = errors.New("invalid rollout input")

type invalidError string

func (e invalidError) Error() string        { return string(e) }
func (e invalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(format string, a ...any) error { return invalidError(fmt.Sprintf(format, a...)) }

// Settings are a rollout's parameters, as aws:elasticbeanstalk:command and
// aws:elasticbeanstalk:trafficsplitting name them. Every field must be set:
// start from Defaults and override what the user gave.
type Settings struct {
	Policy        Policy
	BatchSizeType BatchSizeType
	// BatchSize is a percentage from 1 to 100 (Percentage) or a number of
	// instances of at least 1 (Fixed). Rolling policies use it.
	BatchSize int
	// NewVersionPercent is the share of requests the new version takes
	// while TrafficSplitting evaluates it, from 1 to 100.
	NewVersionPercent int
	// EvaluationTime is how long TrafficSplitting evaluates the new
	// version before it takes all traffic.
	EvaluationTime time.Duration
}

// Defaults returns Elastic Beanstalk's defaults: AllAtOnce, batches of 100
// percent, and a traffic split of 10 percent for 5 minutes.
func Defaults() Settings {
	return Settings{
		Policy:            AllAtOnce,
		BatchSizeType:     Percentage,
		BatchSize:         DefaultBatchSize,
		NewVersionPercent: DefaultNewVersionPercent,
		EvaluationTime:    DefaultEvaluationTime,
	}
}

// ParsePolicy reads a deployment policy, spelled exactly as on Elastic
// Beanstalk.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case AllAtOnce, Rolling, RollingWithAdditionalBatch, Immutable, TrafficSplitting:
		return p, nil
	}
	return "", invalid("unknown deployment policy %q: use AllAtOnce, Rolling, RollingWithAdditionalBatch, Immutable or TrafficSplitting", s)
}

// ParseBatchSizeType reads Percentage or Fixed.
func ParseBatchSizeType(s string) (BatchSizeType, error) {
	switch t := BatchSizeType(s); t {
	case Percentage, Fixed:
		return t, nil
	}
	return "", invalid("unknown batch size type %q: use Percentage or Fixed", s)
}

// Validate reports the first setting out of range.
func (s Settings) Validate() error {
	if _, err := ParsePolicy(string(s.Policy)); err != nil {
		return err
	}
	if _, err := ParseBatchSizeType(string(s.BatchSizeType)); err != nil {
		return err
	}
	if s.BatchSizeType == Percentage && (s.BatchSize < 1 || s.BatchSize > 100) {
		return invalid("batch size %d%% is out of range: use a percentage from 1 to 100", s.BatchSize)
	}
	if s.BatchSizeType == Fixed && s.BatchSize < 1 {
		return invalid("batch size %d is out of range: use a fixed size of at least 1 instance", s.BatchSize)
	}
	if s.NewVersionPercent < 1 || s.NewVersionPercent > 100 {
		return invalid("new version percent %d is out of range: use a percentage from 1 to 100", s.NewVersionPercent)
	}
	if s.EvaluationTime <= 0 {
		return invalid("evaluation time %s is too short: use a duration above 0, such as 5m", s.EvaluationTime)
	}
	return nil
}

// BatchSizeFor returns how many instances a batch holds for an app of
// capacity instances: a percentage of capacity rounded up (10% of 4 is 1,
// 30% of 4 is 2), or the fixed size; never less than 1 nor more than
// capacity.
func (s Settings) BatchSizeFor(capacity int) int {
	b := s.BatchSize
	if s.BatchSizeType == Percentage {
		b = (s.BatchSize*capacity + 99) / 100
	}
	return min(max(b, 1), capacity)
}

// rolling reports whether the policy moves instances in batches of
// BatchSize.
func (s Settings) rolling() bool {
	return s.Policy == Rolling || s.Policy == RollingWithAdditionalBatch
}
