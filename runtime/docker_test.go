package runtime

import (
	"encoding/json"
	"testing"

	"github.com/docker/docker/api/types/container"
)

// TestAddrOf reads container inspections, in the engine's JSON, of the
// shapes the engine gives: the app's port among others the image
// exposes, a bridge entry with no address yet, a stopped container, and
// ports published on every or one address (ProxyServer none).
func TestAddrOf(t *testing.T) {
	const loopback8080 = `"HostConfig":{"PortBindings":{"8080/tcp":[{"HostIp":"127.0.0.1","HostPort":""}]}}`
	cases := []struct {
		name     string
		inspect  string
		addr     string
		hostPort int
	}{
		{"on the bridge", `{` + loopback8080 + `,"NetworkSettings":{
			"Ports":{"8080/tcp":[{"HostIp":"127.0.0.1","HostPort":"49153"}]},
			"Networks":{"bridge":{"IPAddress":"172.17.0.2","Gateway":"172.17.0.1"}}}}`,
			"172.17.0.2:8080", 49153},
		{"the image exposes more ports", `{` + loopback8080 + `,"NetworkSettings":{
			"Ports":{"443/tcp":null,"8080/tcp":[{"HostIp":"127.0.0.1","HostPort":"49153"}],"9999/tcp":null,"53/udp":null},
			"Networks":{"bridge":{"IPAddress":"172.17.0.2"}}}}`,
			"172.17.0.2:8080", 49153},
		{"no host config: the port with bindings", `{"NetworkSettings":{
			"Ports":{"443/tcp":null,"8080/tcp":[{"HostIp":"127.0.0.1","HostPort":"49153"}],"9999/tcp":null},
			"Networks":{"bridge":{"IPAddress":"172.17.0.2"}}}}`,
			"172.17.0.2:8080", 49153},
		{"no bridge address: the published port", `{` + loopback8080 + `,"NetworkSettings":{
			"Ports":{"8080/tcp":[{"HostIp":"127.0.0.1","HostPort":"49153"}]},
			"Networks":{"bridge":{"IPAddress":"","Gateway":""}}}}`,
			"127.0.0.1:49153", 49153},
		{"another network", `{` + loopback8080 + `,"NetworkSettings":{
			"Ports":{"8080/tcp":[{"HostIp":"127.0.0.1","HostPort":"49153"}]},
			"Networks":{"sprout":{"IPAddress":"10.5.0.3"}}}}`,
			"10.5.0.3:8080", 49153},
		{"stopped", `{` + loopback8080 + `,"NetworkSettings":{"Ports":{},"Networks":{"bridge":{"IPAddress":""}}}}`,
			"", 0},
		{"no network settings", `{` + loopback8080 + `}`, "", 0},
		{"published on every address, no bridge address", `{"HostConfig":{"PortBindings":{"8000/tcp":[{"HostIp":"","HostPort":"8000"}]}},"NetworkSettings":{
			"Ports":{"8000/tcp":[{"HostIp":"0.0.0.0","HostPort":"8000"},{"HostIp":"::","HostPort":"8000"}]},
			"Networks":{"bridge":{"IPAddress":""}}}}`,
			"127.0.0.1:8000", 8000},
		{"published on one address, no bridge address", `{"HostConfig":{"PortBindings":{"8000/tcp":[{"HostIp":"10.0.0.5","HostPort":"8000"}]}},"NetworkSettings":{
			"Ports":{"8000/tcp":[{"HostIp":"10.0.0.5","HostPort":"8000"}]},
			"Networks":{"bridge":{"IPAddress":""}}}}`,
			"10.0.0.5:8000", 8000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ins container.InspectResponse
			if err := json.Unmarshal([]byte(tc.inspect), &ins); err != nil {
				t.Fatal(err)
			}
			addr, hostPort := addrOf(ins)
			if addr != tc.addr || hostPort != tc.hostPort {
				t.Errorf("addrOf = %q, %d; want %q, %d", addr, hostPort, tc.addr, tc.hostPort)
			}
		})
	}
}

// TestUsageOf reads stats samples, in the engine's JSON, as cgroup v1
// and v2 engines and engines older than API 1.27 give them.
func TestUsageOf(t *testing.T) {
	cases := []struct {
		name  string
		stats string
		want  Usage
	}{
		{"cgroup v1", `{"cpu_stats":{"cpu_usage":{"total_usage":300,"percpu_usage":[200,100]},"system_cpu_usage":9000,"online_cpus":2},
			"memory_stats":{"usage":5000,"stats":{"inactive_file":700,"total_inactive_file":1000,"rss":3000}}}`,
			Usage{CPU: 300, System: 9000, CPUs: 2, Memory: 4000}},
		{"cgroup v2", `{"cpu_stats":{"cpu_usage":{"total_usage":300},"system_cpu_usage":9000,"online_cpus":4},
			"memory_stats":{"usage":5000,"stats":{"inactive_file":1000,"anon":3000}}}`,
			Usage{CPU: 300, System: 9000, CPUs: 4, Memory: 4000}},
		{"no online_cpus", `{"cpu_stats":{"cpu_usage":{"total_usage":300,"percpu_usage":[100,100,50,50]},"system_cpu_usage":9000},
			"memory_stats":{"usage":5000,"stats":{"total_inactive_file":1000}}}`,
			Usage{CPU: 300, System: 9000, CPUs: 4, Memory: 4000}},
		{"no memory stats", `{"cpu_stats":{"cpu_usage":{"total_usage":300},"system_cpu_usage":9000,"online_cpus":2},"memory_stats":{"usage":5000}}`,
			Usage{CPU: 300, System: 9000, CPUs: 2, Memory: 5000}},
		{"cache larger than usage", `{"cpu_stats":{"online_cpus":2},"memory_stats":{"usage":500,"stats":{"inactive_file":1000}}}`,
			Usage{CPUs: 2, Memory: 500}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var st container.StatsResponse
			if err := json.Unmarshal([]byte(tc.stats), &st); err != nil {
				t.Fatal(err)
			}
			if got := usageOf(st); got != tc.want {
				t.Errorf("usageOf = %+v, want %+v", got, tc.want)
			}
		})
	}
}
