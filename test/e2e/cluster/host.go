package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// The sysctls that kubelet, kube-proxy and the bridge plugin change, or that
// the harness sets itself: recorded before boot and restored after.
var trackedSysctls = []string{
	"net/ipv4/ip_forward",
	"net/bridge/bridge-nf-call-iptables",
	"net/bridge/bridge-nf-call-ip6tables",
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
}

// Fixed host paths kubelet and containerd create whatever their configured
// directories are; removed after the run if they did not exist before it.
var fixedPaths = []string{
	"/var/log/containers",
	"/var/log/pods",
	"/var/lib/kubelet",
	"/var/lib/cni",
	"/run/containerd",
	"/etc/cni",
	"/opt/cni",
}

// hostState is what the host looked like before the cluster started.
type hostState struct {
	Sysctls     map[string]string   `json:"sysctls"`
	AbsentPaths []string            `json:"absentPaths"`
	Chains      map[string][]string `json:"chains"` // "v4/nat" -> chains
	NftTables   []string            `json:"nftTables"`
}

func (c *Cluster) hostStateFile() string { return c.path("host-state.json") }

func (c *Cluster) recordHost() error {
	st := hostState{Sysctls: map[string]string{}, Chains: map[string][]string{}}
	for _, k := range trackedSysctls {
		if v, err := os.ReadFile("/proc/sys/" + k); err == nil {
			st.Sysctls[k] = strings.TrimSpace(string(v))
		}
	}
	for _, p := range fixedPaths {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			st.AbsentPaths = append(st.AbsentPaths, p)
		}
	}
	base, err := HostBaseline()
	if err != nil {
		return err
	}
	st.Chains, st.NftTables = base.Chains, base.NftTables
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(c.hostStateFile(), b, 0o644)
}

func writeSysctl(k, v string) error {
	return os.WriteFile("/proc/sys/"+k, []byte(v), 0o644)
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// bridgeMAC is the node bridge's address: locally administered, made of
// NodeIP.
const bridgeMAC = "02:42:0a:f4:00:01"

// setupHost creates the node's bridge with the node address and makes
// Service addresses unroutable unless kube-proxy translates them, so a
// packet to an unknown ClusterIP can never follow the default route out;
// the cluster DNS's goes onto the bridge.
func (c *Cluster) setupHost() error {
	steps := [][]string{
		// A fixed address: a bridge whose address the kernel picks takes
		// the lowest of its ports', so it changes as pods come and go,
		// and the bridge plugin's CHECK of any pod then fails on it.
		{"ip", "link", "add", Bridge, "address", bridgeMAC, "type", "bridge"},
		{"ip", "addr", "add", NodeIP + "/24", "dev", Bridge},
		{"ip", "link", "set", Bridge, "up"},
		{"ip", "route", "add", "unreachable", ServiceCIDR},
		// The cluster DNS alone is routed, onto the bridge, where
		// kube-proxy's rules take it to CoreDNS: the node's Consul agent
		// recurses names outside consul. there (consul.go). Gone with the
		// bridge.
		{"ip", "route", "add", ClusterDNS + "/32", "dev", Bridge, "src", NodeIP},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return fmt.Errorf("host network: %w", err)
		}
	}
	// Pod-to-Service replies cross the bridge; conntrack must see them.
	for _, k := range []string{"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables", "net/ipv4/ip_forward"} {
		if err := writeSysctl(k, "1"); err != nil {
			return fmt.Errorf("sysctl %s: %w", k, err)
		}
	}
	return acceptBridgeForwarding()
}

// restoreHost undoes setupHost and whatever the components changed.
func (c *Cluster) restoreHost() error {
	var errs []error
	if err := c.unmountUnder(c.Dir); err != nil {
		errs = append(errs, err)
	}
	if linkExists(Bridge) {
		errs = append(errs, run("ip", "link", "del", Bridge))
	}
	if err := os.RemoveAll(runDir); err != nil {
		errs = append(errs, err)
	}
	if routeExists() {
		errs = append(errs, run("ip", "route", "del", "unreachable", ServiceCIDR))
	}
	b, err := os.ReadFile(c.hostStateFile())
	if errors.Is(err, os.ErrNotExist) {
		return errors.Join(errs...)
	}
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	var st hostState
	if err := json.Unmarshal(b, &st); err != nil {
		return errors.Join(append(errs, fmt.Errorf("%s: %w", c.hostStateFile(), err))...)
	}
	if _, err := os.Stat(c.bin("kube-proxy")); err == nil {
		// Removes kube-proxy's rules in every mode; its complaints are about
		// chains that are already gone.
		_ = exec.Command(c.bin("kube-proxy"), "--cleanup").Run()
	}
	errs = append(errs, removeNewChains(st.Chains))
	errs = append(errs, removeNewEmptyTables(st.NftTables))
	for k, v := range st.Sysctls {
		if err := writeSysctl(k, v); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", k, v, err))
		}
	}
	for _, p := range st.AbsentPaths {
		if err := c.unmountUnder(p); err != nil {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

func linkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}

func routeExists() bool {
	out, _ := exec.Command("ip", "route", "show", "type", "unreachable", ServiceCIDR).Output()
	return strings.TrimSpace(string(out)) != ""
}

// unmountUnder unmounts every mount point at or below dir, deepest first.
func (c *Cluster) unmountUnder(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			if err2 := unix.Unmount(p, unix.MNT_DETACH); err2 != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
			}
		}
	}
	return errors.Join(errs...)
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// Leftovers reports anything of a cluster that still exists on the host:
// recorded processes, runtime shims, mounts under the state directory, the
// bridge, the Service route, and chains or nf_tables tables the host did not
// have in before.
func (c *Cluster) Leftovers(before Baseline) ([]string, error) {
	var out []string
	out = append(out, c.recordedAlive()...)
	out = append(out, c.shimPids()...)
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(unescapeMount(f[4]), c.Dir+"/") {
			out = append(out, "mount "+f[4])
		}
	}
	if linkExists(Bridge) {
		out = append(out, "bridge "+Bridge)
	}
	if _, err := os.Stat(runDir); err == nil {
		out = append(out, "directory "+runDir)
	}
	if routeExists() {
		out = append(out, "route unreachable "+ServiceCIDR)
	}
	extra, err := newChains(before.Chains)
	if err != nil {
		return nil, err
	}
	for key, chains := range extra {
		for _, ch := range chains {
			out = append(out, "chain "+key+"/"+ch)
		}
	}
	tables, err := nftTables()
	if err != nil {
		return nil, err
	}
	for _, t := range tables {
		if !slices.Contains(before.NftTables, t) {
			out = append(out, "nft table "+t)
		}
	}
	sort.Strings(out)
	return out, nil
}
