package iptables

// The iptables backend: what it is, how it is named, how the host's is
// found, and what the Applier does differently on each.

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/nftables"
)

// Mode is the iptables backend: the one the host uses, so that rules in a
// pod are seen by the same tools as everything else on the node.
type Mode string

const (
	ModeNFT    Mode = "nft"
	ModeLegacy Mode = "legacy"
)

// ParseMode accepts "nft", "legacy", or "" / "auto" (detect).
func ParseMode(s string) (Mode, error) {
	switch strings.TrimSpace(s) {
	case "", "auto":
		return DetectMode()
	case string(ModeNFT):
		return ModeNFT, nil
	case string(ModeLegacy):
		return ModeLegacy, nil
	}
	return "", fmt.Errorf("iptables mode %q: expected auto, nft or legacy", s)
}

// DetectMode returns the backend the host's `iptables` command uses. On
// Debian-like hosts that is a symlink chain ending in xtables-nft-multi or
// xtables-legacy-multi, read without running anything; otherwise the
// command's --version says "(nf_tables)" or "(legacy)".
func DetectMode() (Mode, error) {
	path, err := exec.LookPath("iptables")
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if p := filepath.Join(dir, "iptables"); isExecutable(p) {
				path, err = p, nil
				break
			}
		}
	}
	if err != nil {
		return "", fmt.Errorf("detect iptables mode: iptables not found: %w", err)
	}
	if target, err := filepath.EvalSymlinks(path); err == nil {
		switch base := filepath.Base(target); {
		case strings.Contains(base, "nft"):
			return ModeNFT, nil
		case strings.Contains(base, "legacy"):
			return ModeLegacy, nil
		}
	}
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("detect iptables mode: %s --version: %w", path, err)
	}
	if strings.Contains(string(out), "legacy") {
		return ModeLegacy, nil
	}
	return ModeNFT, nil
}

// DetectModeIn is DetectMode for the host whose root file system is
// mounted at root (the node agent reads the host's through /proc/1/root):
// it follows the iptables symlink chain inside root, never running
// anything, since the host's binaries may not run in the caller's image.
func DetectModeIn(root string) (Mode, error) {
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, "iptables")
		for range 16 { // a symlink loop ends here
			target, err := os.Readlink(filepath.Join(root, p))
			if err != nil {
				break
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(filepath.Dir(p), target)
			}
			p = target
		}
		switch base := filepath.Base(p); {
		case strings.Contains(base, "nft"):
			return ModeNFT, nil
		case strings.Contains(base, "legacy"):
			return ModeLegacy, nil
		}
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			return "", fmt.Errorf("detect the host's iptables mode: %s in %s is neither an nft nor a legacy xtables binary: set the mode", p, root)
		}
	}
	return "", fmt.Errorf("detect the host's iptables mode: no iptables under %s: set the mode", root)
}

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

// useNetlink: only nf_tables has a netlink path; NoNetlink declines it.
func (a Applier) useNetlink() bool { return a.Mode == ModeNFT && !a.NoNetlink }

// tool is the name of iptables-restore/-save for a family and mode.
func (a Applier) tool(f Family, op string) string {
	base := "iptables"
	if f == IPv6 {
		base = "ip6tables"
	}
	return fmt.Sprintf("%s-%s-%s", base, a.Mode, op)
}

// lockEnv is the environment of a tool run in netns: on the legacy
// backend with a LockDir, the netns' own xtables lock.
func (a Applier) lockEnv(netns string) ([]string, error) {
	if a.Mode != ModeLegacy || a.LockDir == "" {
		return nil, nil
	}
	env := []string{"XTABLES_LOCKFILE=" + lockFile(a.LockDir, netns)}
	if err := os.MkdirAll(a.LockDir, 0o700); err != nil {
		return nil, err
	}
	return env, nil
}

// lockFile is the legacy backend's per-netns xtables lock.
func lockFile(dir, netns string) string {
	sum := sha256.Sum256([]byte(netns))
	return fmt.Sprintf("%s/%x.lock", dir, sum[:8])
}
