package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/sprout-paas/sprout/agent"
	"github.com/sprout-paas/sprout/api"
)

// TestDomainsHelp compares `sprout domains --help` with its golden file.
func TestDomainsHelp(t *testing.T) {
	out, err := run(t, "domains", "--help")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "domains-help.golden", []byte(out))
}

// TestDomainsTable: every app's domains, and what HTTPS does for each.
func TestDomainsTable(t *testing.T) {
	list := api.DomainList{HTTPS: true, ACME: true, Domains: []agent.DomainInfo{
		{App: "shop", Name: "example.com", Certificate: true, Redirect: true, HSTSMaxAge: 31536000},
		{App: "shop", Name: "www.example.com", Certificate: false, Redirect: true},
		{App: "api", Name: "api.example.com", Certificate: true, Redirect: false},
		{App: "api", Name: "*.tenants.example.com"},
	}}
	var out bytes.Buffer
	printDomains(&out, "", list)
	list.ACME = false // only certificates of yours
	printDomains(&out, "", list)
	list.HTTPS = false
	printDomains(&out, "", list)
	printDomains(&out, "web", api.DomainList{})
	golden(t, "domains.golden", out.Bytes())
}

// TestDomainsChange: add and rm need --app and a name; the change goes to
// the agent as one request, and the result is listed.
func TestDomainsChange(t *testing.T) {
	t.Setenv("SPROUT_SOCKET", "/nonexistent/sprout.sock")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"domains", "add", "www.example.com"}, "name the app with --app"},
		{[]string{"domains", "rm", "--app", "web"}, "requires at least 1 arg(s)"},
	} {
		if _, err := run(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("sprout %s: %v, want %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	var got api.DomainChange
	fakeAgent(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v1/apps/web/domains":
			json.NewDecoder(r.Body).Decode(&got)
			json.NewEncoder(w).Encode(api.Message{Done: true})
		case r.Method == http.MethodGet && r.URL.Path == "/v1/domains" && r.URL.Query().Get("app") == "web":
			json.NewEncoder(w).Encode(api.DomainList{Domains: []agent.DomainInfo{{App: "web", Name: "a.example.com"}, {App: "web", Name: "b.example.com"}}})
		default:
			http.NotFound(w, r)
		}
	})
	out, err := run(t, "domains", "add", "--app", "web", "a.example.com", "b.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got.Add, " ") != "a.example.com b.example.com" || len(got.Remove) != 0 {
		t.Errorf("the agent got %+v", got)
	}
	if !strings.Contains(out, "web  b.example.com  -") {
		t.Errorf("output:\n%s", out)
	}
}
