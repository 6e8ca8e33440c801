package iptables

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
