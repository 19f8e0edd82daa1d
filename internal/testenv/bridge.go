package testenv

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"testing"
)

// Bridge is the engine's default bridge network, as servers on the host
// that containers must reach see it.
type Bridge struct {
	// Gateway is the host's own address on the bridge: containers reach
	// the host there.
	Gateway netip.Addr
	// Subnet is the bridge's IPv4 network, where containers' addresses
	// come from.
	Subnet netip.Prefix
}

// DockerBridge reads the engine's default bridge network and the host's
// address on it.
func DockerBridge(t testing.TB) Bridge {
	t.Helper()
	out, err := exec.Command("docker", "network", "inspect", "bridge").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("docker network inspect bridge: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("docker network inspect bridge: %v", err)
	}
	b, err := parseBridge(out, interfacePrefixes)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// interfacePrefixes lists the addresses of the host's interface name.
func interfacePrefixes(name string) ([]netip.Prefix, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return nil, err
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		ones, _ := n.Mask.Size()
		if ok {
			out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
		}
	}
	return out, nil
}

// bridgeNameOption names the bridge's interface on the host in the
// network's options; the default bridge's is docker0.
const bridgeNameOption = "com.docker.network.bridge.name"

// parseBridge works out the default bridge from the output of `docker
// network inspect bridge` and the addresses of the bridge's interface,
// which ifaceAddrs lists. The engine's IPAM entries may lack a Gateway (a
// freshly started engine lists only the Subnet) and may include IPv6
// ones, so the gateway is, in order: the interface's IPv4 address (the
// host's real one), the engine's Gateway, the subnet's first host (where
// the engine puts it). Without an IPv4 subnet entry, the interface's
// network is the subnet.
func parseBridge(inspect []byte, ifaceAddrs func(name string) ([]netip.Prefix, error)) (Bridge, error) {
	var nets []struct {
		Options map[string]string
		IPAM    struct {
			Config []struct{ Subnet, Gateway string }
		}
	}
	if err := json.Unmarshal(inspect, &nets); err != nil {
		return Bridge{}, fmt.Errorf("docker network inspect bridge: %w", err)
	}
	if len(nets) != 1 {
		return Bridge{}, fmt.Errorf("docker network inspect bridge listed %d networks, want 1", len(nets))
	}
	var b Bridge
	for _, c := range nets[0].IPAM.Config {
		p, err := netip.ParsePrefix(c.Subnet)
		if err != nil || !p.Addr().Is4() {
			continue
		}
		b.Subnet = p.Masked()
		if gw, err := netip.ParseAddr(c.Gateway); err == nil && b.Subnet.Contains(gw) {
			b.Gateway = gw
		}
		break
	}
	name := cmp.Or(nets[0].Options[bridgeNameOption], "docker0")
	addrs, ifErr := ifaceAddrs(name)
	for _, a := range addrs {
		if a.Addr().Is4() && (!b.Subnet.IsValid() || b.Subnet.Contains(a.Addr())) {
			b.Gateway = a.Addr()
			if !b.Subnet.IsValid() {
				b.Subnet = a.Masked()
			}
			return b, nil
		}
	}
	if !b.Subnet.IsValid() {
		why := "it has no IPv4 address"
		if ifErr != nil {
			why = ifErr.Error()
		}
		return Bridge{}, fmt.Errorf("the Docker bridge lists no IPv4 subnet, and its interface %s on this host tells none either (%s): a server for containers must listen on the bridge, so the engine must run on this host, not rootless", name, why)
	}
	if !b.Gateway.IsValid() {
		b.Gateway = b.Subnet.Addr().Next()
	}
	return b, nil
}
