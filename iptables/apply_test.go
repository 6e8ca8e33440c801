package iptables

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// These tests drive the Applier's decisions through a fake iptables and a
// stub netlink step, as an ordinary user. netns_test.go proves the same
// paths for real.

const netns = "/run/netns/pod"

func stubbed(mode Mode, nlErr error) (Applier, *fakeTables, *int) {
	fake := newFakeTables()
	calls := 0
	a := Applier{Mode: mode, Runner: fake, netlink: func(string, []Ruleset) error { calls++; return nlErr }}
	return a, fake, &calls
}

func TestApplyNetlinkFirst(t *testing.T) {
	a, fake, nl := stubbed(ModeNFT, nil)
	if err := a.Apply(netns, mustPlan(t, trafficConfig), []Family{IPv4, IPv6}); err != nil {
		t.Fatal(err)
	}
	if *nl != 1 || len(fake.calls) != 0 {
		t.Errorf("netlink calls %d, tool calls %v; want one transaction and no exec", *nl, fake.calls)
	}
}

func TestApplyFallsBackToRestore(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    Mode
		nlErr   error
		netlink int
	}{
		{"nft, netlink fails", ModeNFT, errors.New("netlink: operation not supported"), 1},
		{"legacy never uses netlink", ModeLegacy, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, fake, nl := stubbed(tc.mode, tc.nlErr)
			p := mustPlan(t, trafficConfig)
			fams := []Family{IPv4, IPv6}
			if err := a.Apply(netns, p, fams); err != nil {
				t.Fatal(err)
			}
			first := slices.Clone(fake.calls)
			want := []string{netns + " iptables-" + string(tc.mode) + "-restore --noflush --wait", netns + " ip6tables-" + string(tc.mode) + "-restore --noflush --wait"}
			if *nl != tc.netlink || !slices.Equal(first, want) {
				t.Errorf("netlink %d, calls %q; want netlink %d, calls %q", *nl, first, tc.netlink, want)
			}
			state := fake.nat(netns, "iptables").save()
			// Apply twice: the second finds the chains ("-N" fails), reads
			// them and replaces them; the rules come out the same.
			if err := a.Apply(netns, p, fams); err != nil {
				t.Fatalf("second apply: %v", err)
			}
			if again := fake.nat(netns, "iptables").save(); again != state {
				t.Errorf("second apply changed the rules:\n%s\nthen\n%s", state, again)
			}
			second := fake.calls[len(first):]
			if len(second) != 6 || !strings.Contains(second[1], "-save -t nat") {
				t.Errorf("second apply ran %q, want restore, save, restore per family", second)
			}
			if err := a.Verify(netns, p, fams); err != nil {
				t.Errorf("verify: %v", err)
			}
		})
	}
}

func TestFailedRestoreRollsBack(t *testing.T) {
	a, fake, _ := stubbed(ModeNFT, errors.New("netlink refused"))
	p := mustPlan(t, trafficConfig)
	fake.fail["ip6tables-nft-restore"] = "ip6tables-nft-restore: line 9 failed"
	err := a.Apply(netns, p, []Family{IPv4, IPv6})
	if err == nil {
		t.Fatal("apply succeeded with a failing IPv6 restore")
	}
	for _, want := range []string{"apply IPv6 rules", "line 9 failed", "netlink: netlink refused"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if l := parseSave(fake.nat(netns, "iptables").save()); !l.empty() {
		t.Errorf("IPv4 rules left after a failed apply: %v", l.rules)
	}
}

func TestRemove(t *testing.T) {
	unavailable := map[string]string{
		"nft EAFNOSUPPORT":  "ip6tables-nft-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Address family not supported by protocol",
		"nft EINVAL":        "ip6tables-nft-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Invalid argument",
		"legacy, no module": "ip6tables-legacy-save v1.8.9 (legacy): can't initialize ip6tables table `nat': Table does not exist (do you need to insmod?)",
	}
	for name, stderr := range unavailable {
		t.Run("skips IPv6: "+name, func(t *testing.T) {
			mode := ModeNFT
			if strings.Contains(name, "legacy") {
				mode = ModeLegacy
			}
			a, fake, _ := stubbed(mode, errors.New("netlink: address family not supported"))
			if err := a.Apply(netns, mustPlan(t, trafficConfig), []Family{IPv4}); err != nil {
				t.Fatal(err)
			}
			fake.fail["ip6tables-"+string(mode)+"-save"] = stderr
			skipped, err := a.Remove(netns, []Family{IPv4, IPv6})
			if err != nil || !slices.Equal(skipped, []Family{IPv6}) {
				t.Errorf("Remove = %v, %v; want IPv6 skipped and no error", skipped, err)
			}
			if l := parseSave(fake.nat(netns, "iptables").save()); !l.empty() {
				t.Errorf("IPv4 rules left: %v", l.rules)
			}
		})
	}
	t.Run("a permission error is not skipped", func(t *testing.T) {
		a, fake, _ := stubbed(ModeNFT, errors.New("netlink: operation not permitted"))
		fake.fail["ip6tables-nft-save"] = "ip6tables-nft-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)"
		skipped, err := a.Remove(netns, []Family{IPv4, IPv6})
		if err == nil || len(skipped) != 0 || !strings.Contains(err.Error(), "remove IPv6 rules") ||
			!strings.Contains(err.Error(), "netlink: operation not permitted") {
			t.Errorf("Remove = %v, %v; want an error naming IPv6 and what netlink said", skipped, err)
		}
	})
	t.Run("over netlink: no exec", func(t *testing.T) {
		a, fake, nl := stubbed(ModeNFT, nil)
		skipped, err := a.Remove(netns, []Family{IPv4, IPv6})
		if err != nil || len(skipped) != 0 || *nl != 1 || len(fake.calls) != 0 {
			t.Errorf("Remove = %v, %v after %d transactions and calls %v", skipped, err, *nl, fake.calls)
		}
	})
	t.Run("IPv6 disabled at boot: not even asked", func(t *testing.T) {
		old := ipv6Sysctls
		ipv6Sysctls = filepath.Join(t.TempDir(), "absent")
		defer func() { ipv6Sysctls = old }()
		a, fake, _ := stubbed(ModeLegacy, nil)
		skipped, err := a.Remove(netns, []Family{IPv4, IPv6})
		if err != nil || !slices.Equal(skipped, []Family{IPv6}) {
			t.Errorf("Remove = %v, %v", skipped, err)
		}
		for _, c := range fake.calls {
			if strings.Contains(c, "ip6tables") {
				t.Errorf("ran %q on a kernel without IPv6", c)
			}
		}
	})
}

func TestEncoderRefusesWhatItCannotEncode(t *testing.T) {
	for _, tc := range []struct {
		rule Rule
		want string
	}{
		{Rule{Chain: ChainOutput, Proto: Protocol(47), Target: "RETURN"}, "protocol 47 is not tcp or udp"},
		{Rule{Chain: ChainOutput, DPort: &PortRange{80, 80}, Target: "RETURN"}, "a port match needs tcp or udp"},
		{Rule{Chain: ChainOutput, Target: "MASQUERADE"}, `target "MASQUERADE" is not encoded`},
	} {
		if _, err := tc.rule.exprs(IPv4); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.rule, err, tc.want)
		}
	}
}
