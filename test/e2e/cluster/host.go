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

	"github.com/coreos/go-iptables/iptables"
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

// Chains in these families belong to the cluster's components; any that the
// host did not have before boot are removed after the run.
var ownedChainPrefixes = []string{"KUBE-", "CNI-"}

var natFilterMangle = []string{"filter", "nat", "mangle"}

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

func listChains() (map[string][]string, error) {
	out := map[string][]string{}
	for _, fam := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.NewWithProtocol(fam)
		if err != nil {
			return nil, fmt.Errorf("iptables: %w", err)
		}
		for _, table := range natFilterMangle {
			chains, err := ipt.ListChains(table)
			if err != nil {
				return nil, fmt.Errorf("list %s chains: %w", table, err)
			}
			sort.Strings(chains)
			out[famName(fam)+"/"+table] = chains
		}
	}
	return out, nil
}

func famName(p iptables.Protocol) string {
	if p == iptables.ProtocolIPv6 {
		return "v6"
	}
	return "v4"
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

// setupHost creates the node's bridge with the node address and makes
// Service addresses unroutable unless kube-proxy translates them, so a
// packet to an unknown ClusterIP can never follow the default route out.
func (c *Cluster) setupHost() error {
	steps := [][]string{
		{"ip", "link", "add", Bridge, "type", "bridge"},
		{"ip", "addr", "add", NodeIP + "/24", "dev", Bridge},
		{"ip", "link", "set", Bridge, "up"},
		{"ip", "route", "add", "unreachable", ServiceCIDR},
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
	return nil
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

// newChains lists owned chains the host did not have before boot.
func newChains(before map[string][]string) (map[string][]string, error) {
	now, err := listChains()
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for key, chains := range now {
		for _, ch := range chains {
			if owned(ch) && !slices.Contains(before[key], ch) {
				out[key] = append(out[key], ch)
			}
		}
	}
	return out, nil
}

func owned(chain string) bool {
	for _, p := range ownedChainPrefixes {
		if strings.HasPrefix(chain, p) {
			return true
		}
	}
	return false
}

func removeNewChains(before map[string][]string) error {
	extra, err := newChains(before)
	if err != nil {
		return err
	}
	var errs []error
	for key, chains := range extra {
		fam, table, _ := strings.Cut(key, "/")
		proto := iptables.ProtocolIPv4
		if fam == "v6" {
			proto = iptables.ProtocolIPv6
		}
		ipt, err := iptables.NewWithProtocol(proto)
		if err != nil {
			return err
		}
		// Drop every jump into a chain we remove, then the chains themselves.
		all, err := ipt.ListChains(table)
		if err != nil {
			return err
		}
		bin := "iptables"
		if fam == "v6" {
			bin = "ip6tables"
		}
		for _, ch := range all {
			rules, err := ipt.List(table, ch)
			if err != nil {
				continue
			}
			// Delete by position, last first, so earlier positions stay valid;
			// re-parsing iptables -S quoting is not worth the risk.
			var jumps []int
			n := 0
			for _, r := range rules {
				if !strings.HasPrefix(r, "-A ") {
					continue
				}
				n++
				for _, victim := range chains {
					if strings.HasSuffix(r, " -j "+victim) || strings.Contains(r, " -j "+victim+" ") {
						jumps = append(jumps, n)
						break
					}
				}
			}
			for i := len(jumps) - 1; i >= 0; i-- {
				if err := run(bin, "-w", "-t", table, "-D", ch, fmt.Sprint(jumps[i])); err != nil {
					errs = append(errs, err)
				}
			}
		}
		for _, ch := range chains {
			_ = ipt.ClearChain(table, ch)
		}
		for _, ch := range chains {
			if err := ipt.DeleteChain(table, ch); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: delete chain %s: %w", fam, table, ch, err))
			}
		}
	}
	return errors.Join(errs...)
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

// Baseline is the host's packet-filter state before a cluster started.
type Baseline struct {
	Chains    map[string][]string
	NftTables []string
}

// HostBaseline records the host's chains and nf_tables tables now.
func HostBaseline() (Baseline, error) {
	tables, err := nftTables()
	if err != nil {
		return Baseline{}, err
	}
	chains, err := listChains()
	return Baseline{Chains: chains, NftTables: tables}, err
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

// nftTables lists "family name" of every nf_tables table. Listing chains
// with iptables-nft creates its tables, so the baseline is taken first.
func nftTables() ([]string, error) {
	out, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		return nil, fmt.Errorf("nft list tables: %w", err)
	}
	var tables []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "table" {
			tables = append(tables, f[1]+" "+f[2])
		}
	}
	sort.Strings(tables)
	return tables, nil
}

// newEmptyTables lists tables absent before boot that hold no rule: what
// iptables-nft leaves once the components' chains are gone.
func newEmptyTables(before []string) ([]string, error) {
	now, err := nftTables()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range now {
		if slices.Contains(before, t) {
			continue
		}
		f := strings.Fields(t)
		listing, err := exec.Command("nft", "-a", "list", "table", f[0], f[1]).Output()
		if err != nil {
			return nil, err
		}
		rules := 0
		for _, line := range strings.Split(string(listing), "\n") {
			l := strings.TrimSpace(line)
			if strings.Contains(l, "# handle") && !strings.HasPrefix(l, "chain ") && !strings.HasPrefix(l, "table ") {
				rules++
			}
		}
		if rules == 0 {
			out = append(out, t)
		}
	}
	return out, nil
}

func removeNewEmptyTables(before []string) error {
	tables, err := newEmptyTables(before)
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range tables {
		f := strings.Fields(t)
		errs = append(errs, run("nft", "delete", "table", f[0], f[1]))
	}
	return errors.Join(errs...)
}
