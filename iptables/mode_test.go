package iptables

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/meshlet/meshlet/test/netnstest"
)

func TestDetectModeIn(t *testing.T) {
	for _, tc := range []struct {
		name  string
		links map[string]string // path in root → symlink target
		files []string
		want  Mode
		err   string
	}{
		{"debian nft via alternatives", map[string]string{
			"usr/sbin/iptables": "/etc/alternatives/iptables", "etc/alternatives/iptables": "/usr/sbin/iptables-nft",
			"usr/sbin/iptables-nft": "xtables-nft-multi"}, []string{"usr/sbin/xtables-nft-multi"}, ModeNFT, ""},
		{"legacy, relative link", map[string]string{"sbin/iptables": "xtables-legacy-multi"}, []string{"sbin/xtables-legacy-multi"}, ModeLegacy, ""},
		{"plain binary", nil, []string{"usr/sbin/iptables"}, "", "neither an nft nor a legacy"},
		{"absent", nil, nil, "", "no iptables under"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for _, f := range tc.files {
				if err := os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(root, f), nil, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for p, target := range tc.links {
				if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
					t.Fatal(err)
				}
			}
			got, err := DetectModeIn(root)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("DetectModeIn: %v, want an error with %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("DetectModeIn = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestDetectMode(t *testing.T) {
	out, err := exec.Command("iptables", "--version").Output()
	if err != nil {
		t.Fatalf("iptables --version: %v (make tools installs iptables)", err)
	}
	want := ModeNFT
	if strings.Contains(string(out), "legacy") {
		want = ModeLegacy
	}
	got, err := DetectMode()
	if err != nil || got != want {
		t.Errorf("DetectMode() = %q, %v; iptables --version says %q", got, err, out)
	}
	if _, err := ParseMode("iptables-nft"); err == nil || !strings.Contains(err.Error(), "expected auto, nft or legacy") {
		t.Errorf("ParseMode accepted a bad mode: %v", err)
	}
}

// TestDetectModeFromRules: in a netns whose rules one backend wrote,
// with a Kubernetes chain as kube-proxy leaves one, detection names that
// backend; a netns without rules gives an error, not a guess.
func TestDetectModeFromRules(t *testing.T) {
	netnstest.RequireRoot(t)
	detectIn := func(n ns.NetNS) (m Mode, err error) {
		if e := n.Do(func(ns.NetNS) error { m, err = DetectModeFromRules(); return nil }); e != nil {
			t.Fatal(e)
		}
		return m, err
	}
	for _, mode := range []Mode{ModeNFT, ModeLegacy} {
		t.Run(string(mode), func(t *testing.T) {
			n := netnstest.NewNS(t)
			iptablesIn(t, mode, n, "-t", "nat", "-N", "KUBE-SERVICES")
			if got, err := detectIn(n); err != nil || got != mode {
				t.Fatalf("DetectModeFromRules = %q, %v; want %q", got, err, mode)
			}
		})
	}
	t.Run("both, Kubernetes in nft", func(t *testing.T) {
		n := netnstest.NewNS(t)
		iptablesIn(t, ModeLegacy, n, "-t", "nat", "-N", "OTHER")
		iptablesIn(t, ModeNFT, n, "-t", "nat", "-N", "KUBE-SERVICES")
		if got, err := detectIn(n); err != nil || got != ModeNFT {
			t.Fatalf("DetectModeFromRules = %q, %v; want nft", got, err)
		}
	})
	t.Run("no rules", func(t *testing.T) {
		if got, err := detectIn(netnstest.NewNS(t)); err == nil {
			t.Fatalf("DetectModeFromRules = %q in an empty netns, want an error", got)
		}
	})
}
