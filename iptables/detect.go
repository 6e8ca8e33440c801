package iptables

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
)

// DetectModeFromRules tells the backend from the rules in the caller's
// network namespace, for a process on the host network that cannot read
// the host's iptables symlinks: kube-proxy (or the node's other iptables
// users) wrote them with the host's iptables. As kubernetes-sigs'
// iptables-wrapper does, Kubernetes' own chains decide: KUBE-* chains in
// nf_tables' ip/ip6 tables mean nft; otherwise legacy tables registered in
// the kernel mean legacy; otherwise any iptables-nft table means nft.
func DetectModeFromRules() (Mode, error) {
	conn, err := nftables.New()
	if err != nil {
		return "", fmt.Errorf("detect iptables mode from rules: %w", err)
	}
	tables, err := conn.ListTables()
	if err != nil {
		return "", fmt.Errorf("detect iptables mode from rules: list nf_tables tables: %w", err)
	}
	nftTables := false
	for _, t := range tables {
		if t.Family != nftables.TableFamilyIPv4 && t.Family != nftables.TableFamilyIPv6 {
			continue
		}
		nftTables = true
		chains, err := conn.ListChainsOfTableFamily(t.Family)
		if err != nil {
			return "", fmt.Errorf("detect iptables mode from rules: list chains: %w", err)
		}
		for _, c := range chains {
			if c.Table.Name == t.Name && strings.HasPrefix(c.Name, "KUBE-") {
				return ModeNFT, nil
			}
		}
	}
	// thread-self: the netns of this thread, which a caller may have
	// switched alone (/proc/net follows the process's first thread).
	legacy, err := os.ReadFile("/proc/thread-self/net/ip_tables_names")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("detect iptables mode from rules: %w", err)
	}
	switch {
	case len(strings.TrimSpace(string(legacy))) > 0:
		return ModeLegacy, nil
	case nftTables:
		return ModeNFT, nil
	}
	return "", errors.New("detect iptables mode from rules: no iptables rules in this network namespace to tell the backend by")
}
