package agent

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestValidateDomains: names are normalised (lower case, IDNA, no
// trailing dot, each once, sorted), and what is not a host name is
// refused with the reason.
func TestValidateDomains(t *testing.T) {
	got, err := ValidateDomains([]string{"WWW.Example.com.", "example.com", "www.example.com", "bücher.example", "*.Apps.example.com", "LocalHost"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"*.apps.example.com", "example.com", "localhost", "www.example.com", "xn--bcher-kva.example"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for in, why := range map[string]string{
		"":                                       "empty",
		"https://www.example.com":                "no scheme: give www.example.com alone",
		"www.example.com/path":                   "no path",
		"www.example.com:8080":                   "no port",
		"192.0.2.1":                              "an IP address",
		"intranet":                               "fully qualified",
		"*.localhost":                            "fully qualified",
		"a..example.com":                         "not a valid host name",
		"-a.example.com":                         "not a valid host name",
		"*.*.example.com":                        "not a valid host name",
		"under_score.example.com":                "not a valid host name",
		strings.Repeat("a", 64) + ".example.com": "not a valid host name",
	} {
		_, err := ValidateDomains([]string{in})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), why) {
			t.Errorf("%q: %v, want an error saying %q", in, err, why)
		}
	}
}

// TestParseSettingsDomains: --domain repeated or comma-separated, and the
// HTTPS settings.
func TestParseSettingsDomains(t *testing.T) {
	s, err := ParseSettings(map[string][]string{"domain": {"a.example.com, b.example.com", "c.example.com"}, "https_redirect": {"false"}, "hsts": {"600"}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Domains == nil || !slices.Equal(*s.Domains, []string{"a.example.com", "b.example.com", "c.example.com"}) {
		t.Errorf("domains = %v", s.Domains)
	}
	if s.HTTPSRedirect == nil || *s.HTTPSRedirect || s.HSTSMaxAge == nil || *s.HSTSMaxAge != 600 {
		t.Errorf("https settings = %v %v", s.HTTPSRedirect, s.HSTSMaxAge)
	}
	if _, err := ParseSettings(map[string][]string{"https_redirect": {"maybe"}}); err == nil || !strings.Contains(err.Error(), "not true or false") {
		t.Errorf("https_redirect=maybe: %v", err)
	}
}
