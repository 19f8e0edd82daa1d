package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sprout-paas/sprout/internal/testenv"
)

// TestPrometheusScrapesTheAgent runs a real Prometheus (Debian's package)
// scraping a real agent, deploys an app, sends it traffic, and reads the
// request and deploy series back through Prometheus's HTTP API.
func TestPrometheusScrapesTheAgent(t *testing.T) {
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		testenv.Missing(t, "prometheus is not installed", "scripts/ensure-test-deps.sh installs it as root: apt-get install prometheus")
	}
	a := startAgent(t)
	app, port := testenv.Name("prom"), testenv.FreePort(t)
	a.mustSprout("deploy", testenv.Bundle(t, ""), "--app", app, "--label", "v1", "--port", fmt.Sprint(port))
	for range 25 {
		get(t, port)
	}

	dir := t.TempDir()
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sprout\n    static_configs:\n      - targets: [%q]\n", a.metricsAddr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	prom := exec.Command(promBin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promAddr)
	logf, _ := os.Create(filepath.Join(dir, "prometheus.log"))
	prom.Stdout, prom.Stderr = logf, logf
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prom.Process.Kill(); prom.Wait() })

	query := func(q string) []map[string]any {
		resp, err := http.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		var out struct {
			Data struct {
				Result []map[string]any `json:"result"`
			} `json:"data"`
		}
		json.NewDecoder(resp.Body).Decode(&out)
		return out.Data.Result
	}
	want := map[string]string{
		"requests":     fmt.Sprintf(`sprout_proxy_requests_total{app=%q,method="GET",code="2xx"} >= 25`, app),
		"latency":      fmt.Sprintf(`sprout_proxy_request_duration_seconds_count{app=%q} >= 25`, app),
		"deploys":      fmt.Sprintf(`sprout_deploys_total{app=%q,op="deploy",result="success"} == 1`, app),
		"build step":   fmt.Sprintf(`sprout_deploy_step_duration_seconds_count{app=%q,step="build"} == 1`, app),
		"serving":      fmt.Sprintf(`sprout_app_serving_info{app=%q,label="v1"} == 1`, app),
		"last success": fmt.Sprintf(`sprout_deploy_last_success_timestamp_seconds{app=%q} > 0`, app),
		"go runtime":   `go_goroutines > 0`,
		"health":       fmt.Sprintf(`sprout_app_health_status{app=%q} == 1`, app),
		"memory":       fmt.Sprintf(`sprout_container_memory_bytes{app=%q} > 0`, app),
		"checks":       fmt.Sprintf(`sprout_health_checks_total{app=%q,result="pass"} > 0`, app),
		"store":        `sprout_store_size_bytes > 0`,
	}
	deadline := time.Now().Add(60 * time.Second)
	for name, q := range want {
		for len(query(q)) == 0 {
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
				t.Fatalf("Prometheus never had %s (%s)\n%s", name, q, log)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}
