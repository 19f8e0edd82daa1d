package testenv

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
)

// network is `docker network inspect bridge` output for a bridge whose
// interface is ifname and whose IPAM config entries are configs (JSON).
func network(ifname string, configs ...string) string {
	return `[{"Name":"bridge","Driver":"bridge","IPAM":{"Driver":"default","Options":null,"Config":[` + strings.Join(configs, ",") +
		`]},"Options":{"com.docker.network.bridge.default_bridge":"true","com.docker.network.bridge.name":"` + ifname + `"}}]`
}

func TestParseBridge(t *testing.T) {
	fresh, err := os.ReadFile("testdata/bridge-fresh-engine.json")
	if err != nil {
		t.Fatal(err)
	}
	docker0 := map[string][]string{"docker0": {"172.17.0.1/16", "fe80::42:c9ff:fe11:1c0/64"}}
	cases := []struct {
		name    string
		inspect string
		ifaces  map[string][]string // interface name: its addresses
		gateway string
		subnet  string
	}{
		// Captured from a freshly started engine: a Subnet, no Gateway.
		{"fresh engine", string(fresh), docker0, "172.17.0.1", "172.17.0.0/16"},
		{"fresh engine, no interface seen", string(fresh), nil, "172.17.0.1", "172.17.0.0/16"},
		{"engine lists the gateway", network("docker0", `{"Subnet":"172.17.0.0/16","Gateway":"172.17.0.1"}`), docker0, "172.17.0.1", "172.17.0.0/16"},
		{"engine lists the gateway, no interface seen", network("docker0", `{"Subnet":"10.9.0.0/16","Gateway":"10.9.0.254"}`), nil, "10.9.0.254", "10.9.0.0/16"},
		{"IPv6 entry first", network("docker0", `{"Subnet":"fd00:dead:beef::/64","Gateway":"fd00:dead:beef::1"}`, `{"Subnet":"172.17.0.0/16"}`),
			map[string][]string{"docker0": {"fd00:dead:beef::1/64", "172.17.0.1/16"}}, "172.17.0.1", "172.17.0.0/16"},
		{"IPv6 entry only the engine's", network("docker0", `{"Subnet":"172.17.0.0/16"}`, `{"Subnet":"fd00::/64","Gateway":"fd00::1"}`), nil, "172.17.0.1", "172.17.0.0/16"},
		// dockerd --bip 10.20.0.5/24 --bridge br-sprout: the host is not on
		// the subnet's first address.
		{"custom bridge and bip", network("br-sprout", `{"Subnet":"10.20.0.0/24"}`),
			map[string][]string{"br-sprout": {"10.20.0.5/24"}, "docker0": {"172.17.0.1/16"}}, "10.20.0.5", "10.20.0.0/24"},
		{"interface address outside the subnet is not the gateway", network("docker0", `{"Subnet":"172.18.0.0/16"}`),
			map[string][]string{"docker0": {"192.168.1.1/24"}}, "172.18.0.1", "172.18.0.0/16"},
		{"gateway outside the subnet is ignored", network("docker0", `{"Subnet":"172.17.0.0/16","Gateway":"10.0.0.1"}`), nil, "172.17.0.1", "172.17.0.0/16"},
		{"no IPAM config", network("docker0"), docker0, "172.17.0.1", "172.17.0.0/16"},
		{"unmasked subnet", network("docker0", `{"Subnet":"172.17.0.1/16"}`), nil, "172.17.0.1", "172.17.0.0/16"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := parseBridge([]byte(tc.inspect), lookup(tc.ifaces))
			if err != nil {
				t.Fatal(err)
			}
			if b.Gateway.String() != tc.gateway || b.Subnet.String() != tc.subnet {
				t.Errorf("gateway %s subnet %s, want %s %s", b.Gateway, b.Subnet, tc.gateway, tc.subnet)
			}
		})
	}
}

func TestParseBridgeFails(t *testing.T) {
	cases := []struct {
		name, inspect, want string
	}{
		{"no subnet, no interface", network("docker0"), "lists no IPv4 subnet"},
		{"only IPv6, no interface", network("docker0", `{"Subnet":"fd00::/64","Gateway":"fd00::1"}`), "lists no IPv4 subnet"},
		{"no network", `[]`, "listed 0 networks"},
		{"not JSON", `Error: No such network: bridge`, "docker network inspect bridge"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseBridge([]byte(tc.inspect), lookup(nil))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

// lookup stands for the host's interfaces: ifaces maps names to addresses.
func lookup(ifaces map[string][]string) func(string) ([]netip.Prefix, error) {
	return func(name string) ([]netip.Prefix, error) {
		addrs, ok := ifaces[name]
		if !ok {
			return nil, errors.New("route ip+net: no such network interface")
		}
		var out []netip.Prefix
		for _, a := range addrs {
			out = append(out, netip.MustParsePrefix(a))
		}
		return out, nil
	}
}

// TestDockerBridgeIsTheHosts reads this engine's bridge: the host owns
// the gateway address, so a server can listen there.
func TestDockerBridgeIsTheHosts(t *testing.T) {
	Docker(t)
	b := DockerBridge(t)
	l, err := net.Listen("tcp", net.JoinHostPort(b.Gateway.String(), "0"))
	if err != nil {
		t.Fatalf("cannot listen on the bridge gateway %s: %v", b.Gateway, err)
	}
	l.Close()
	if !b.Subnet.Contains(b.Gateway) {
		t.Errorf("gateway %s outside subnet %s", b.Gateway, b.Subnet)
	}
}
