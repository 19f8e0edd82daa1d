package agent

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ParseSettings reads per-app settings from the deploy API's query
// parameters (the CLI's deploy flags, and a fleet release's settings).
func ParseSettings(q map[string][]string) (Settings, error) {
	var s Settings
	var errs []string
	get := func(k string) (string, bool) {
		v, ok := q[k]
		if !ok || len(v) == 0 {
			return "", false
		}
		return v[0], true
	}
	intp := func(k string) *int {
		v, ok := get(k)
		if !ok {
			return nil
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s=%q is not a whole number", k, v))
			return nil
		}
		return &n
	}
	durp := func(k string) *time.Duration {
		v, ok := get(k)
		if !ok {
			return nil
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s=%q is not a duration like 500ms or 2m", k, v))
			return nil
		}
		return &d
	}
	s.Port = intp("port")
	s.ContainerPort = intp("container_port")
	if v, ok := get("health_path"); ok {
		s.HealthPath = &v
	}
	s.HealthInterval = durp("health_interval")
	s.HealthTimeout = durp("health_timeout")
	s.HealthyThreshold = intp("healthy_threshold")
	s.HealthGrace = durp("health_grace")
	s.HealthDeadline = durp("health_deadline")
	s.Instances = intp("instances")
	s.BatchSize = intp("batch_size")
	s.CanaryPercent = intp("canary_percent")
	s.EvaluationTime = durp("evaluation_time")
	if v, ok := get("policy"); ok {
		s.Policy = &v
	}
	if v, ok := get("batch_size_type"); ok {
		s.BatchSizeType = &v
	}
	if vs, ok := q["domain"]; ok {
		// Repeated, or comma-separated (a fleet release keeps one
		// value per setting).
		var names []string
		for _, v := range vs {
			for n := range strings.SplitSeq(v, ",") {
				if n = strings.TrimSpace(n); n != "" {
					names = append(names, n)
				}
			}
		}
		s.Domains = &names
	}
	if v, ok := get("https_redirect"); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("https_redirect=%q is not true or false", v))
		}
		s.HTTPSRedirect = &b
	}
	s.HSTSMaxAge = intp("hsts")
	if len(errs) > 0 {
		return s, fmt.Errorf("%w: %s", ErrInvalid, strings.Join(errs, "; "))
	}
	return s, nil
}
