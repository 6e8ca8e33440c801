package iptables

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
