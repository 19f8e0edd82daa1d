package cli

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/sprout-paas/sprout/fleet"
	"github.com/sprout-paas/sprout/internal/testenv"
	"github.com/sprout-paas/sprout/source"
)

// TestAgentRefusesStoreWithoutConditionalWrites starts an agent's
// environment on a store that drops If-Match and If-None-Match, as some
// S3-compatible stores do: the agent refuses it, saying why and what to
// use; the same store answering them is joined.
func TestAgentRefusesStoreWithoutConditionalWrites(t *testing.T) {
	fake := testenv.S3(t, "fleet")
	u, err := url.Parse(fake.URL)
	if err != nil {
		t.Fatal(err)
	}
	next := httputil.NewSingleHostReverseProxy(u)
	dropping := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del("If-Match")
		r.Header.Del("If-None-Match")
		next.ServeHTTP(w, r)
	}))
	t.Cleanup(dropping.Close)
	cfg := &AgentConfig{Environment: "s3://fleet/envs/prod/", HostID: "host-1"}

	cfg.S3 = source.S3Options{Endpoint: dropping.URL, PathStyle: true}
	_, _, err = joinEnvironment(context.Background(), cfg)
	if !errors.Is(err, fleet.ErrNoConditionalWrites) || !strings.Contains(err.Error(), "config environment") || !strings.Contains(err.Error(), "use AWS S3") {
		t.Errorf("a store that drops conditional headers: %v", err)
	}

	cfg.S3 = source.S3Options{Endpoint: fake.URL, PathStyle: true}
	st, host, err := joinEnvironment(context.Background(), cfg)
	if err != nil || host.ID != "host-1" || st.URL() != "s3://fleet/envs/prod/" {
		t.Errorf("a store that honours them: %v %+v", err, host)
	}
}
