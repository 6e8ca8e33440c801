package cluster

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// The host's packet filter: what the cluster's components add to it (KUBE-*
// and CNI-* chains, nf_tables tables), recorded before boot and removed
// after.

var natFilterMangle = []string{"filter", "nat", "mangle"}

// Chains in these families belong to the cluster's components or the
// harness; any that the host did not have before boot are removed after
// the run, with every jump into them.
var ownedChainPrefixes = []string{"KUBE-", "CNI-", forwardChain}

// Baseline is the host's packet-filter state before a cluster started.
type Baseline struct {
	Chains    map[string][]string
	NftTables []string
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

// HostBaseline records the host's chains and nf_tables tables now.
func HostBaseline() (Baseline, error) {
	tables, err := nftTables()
	if err != nil {
		return Baseline{}, err
	}
	chains, err := listChains()
	return Baseline{Chains: chains, NftTables: tables}, err
}
