package platform

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
)

// Limits on environment properties, as Elastic Beanstalk sets them.
const (
	MaxEnvKeyLen   = 128
	MaxEnvValueLen = 256
	// MaxEnvTotal is the largest combined size of all properties written
	// as key=value.
	MaxEnvTotal = 4096
)

// ErrInvalidEnv is wrapped by every error about an environment property.
var ErrInvalidEnv = errors.New("invalid environment property")

var envKey = regexp.MustCompile(`^[A-Za-z0-9_.:/+\\\-@]+$`)

// ValidateEnvKey checks one property name.
func ValidateEnvKey(k string) error {
	switch {
	case k == "":
		return fmt.Errorf("%w: empty name", ErrInvalidEnv)
	case len(k) > MaxEnvKeyLen:
		return fmt.Errorf("%w: %.20s...: the name is %d characters, the limit is %d", ErrInvalidEnv, k, len(k), MaxEnvKeyLen)
	case !envKey.MatchString(k):
		return fmt.Errorf("%w: %q: names may use letters, digits and _ . : / + \\ - @ only", ErrInvalidEnv, k)
	}
	return nil
}

// ValidateEnv checks every property and their combined size.
func ValidateEnv(env map[string]string) error {
	total := 0
	for _, k := range slices.Sorted(maps.Keys(env)) {
		v := env[k]
		if err := ValidateEnvKey(k); err != nil {
			return err
		}
		if len(v) > MaxEnvValueLen {
			return fmt.Errorf("%w: %s: the value is %d characters, the limit is %d", ErrInvalidEnv, k, len(v), MaxEnvValueLen)
		}
		if strings.ContainsAny(v, "\x00\n\r") {
			return fmt.Errorf("%w: %s: the value has a newline or NUL byte", ErrInvalidEnv, k)
		}
		total += len(k) + 1 + len(v)
	}
	if total > MaxEnvTotal {
		return fmt.Errorf("%w: all properties together take %d bytes as key=value, the limit is %d", ErrInvalidEnv, total, MaxEnvTotal)
	}
	return nil
}

// ParseAssignments reads KEY=value arguments as `eb setenv` does: an empty
// value (KEY=) deletes the property.
func ParseAssignments(args []string) (set map[string]string, unset []string, err error) {
	set = map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return nil, nil, fmt.Errorf("%w: %q is not KEY=value (use KEY= to delete a property)", ErrInvalidEnv, a)
		}
		if err := ValidateEnvKey(k); err != nil {
			return nil, nil, err
		}
		if v == "" {
			unset = append(unset, k)
			delete(set, k)
			continue
		}
		set[k] = v
	}
	return set, unset, nil
}

// Apply returns env with set applied and unset removed, without changing env.
func Apply(env, set map[string]string, unset []string) map[string]string {
	out := maps.Clone(env)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, set)
	for _, k := range unset {
		delete(out, k)
	}
	return out
}

var secretKey = regexp.MustCompile(`(?i)(SECRET|PASSW(OR)?D|PASS$|TOKEN|PRIVATE|CREDENTIAL|(^|_)KEY$|API_?KEY|ACCESS_KEY|AUTH|DATABASE_URL|_DSN$)`)

// IsSecret tells whether a property's name suggests a secret value.
func IsSecret(key string) bool { return secretKey.MatchString(key) }

// Mask is what printenv shows instead of a secret value.
func Mask(string) string { return "********" }
