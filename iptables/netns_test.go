package iptables

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"

	"github.com/meshlet/meshlet/test/netnstest"
)

func TestMain(m *testing.M) {
	netnstest.HelperMain()
	code := m.Run()
	netnstest.Cleanup()
	os.Exit(code)
}

// backends: nft over netlink (the default), nft through iptables-restore,
// and legacy.
var backends = []struct {
	name string
	a    Applier
}{
	{"nft-netlink", Applier{Mode: ModeNFT}},
	{"nft-restore", Applier{Mode: ModeNFT, NoNetlink: true}},
	{"legacy", Applier{Mode: ModeLegacy}},
}

var trafficConfig = Config{
	ProxyUserID: "5995", ProxyInboundPort: 20000, ProxyOutboundPort: 15001,
	ExcludeInboundPorts:  []string{"9090"},
	ExcludeOutboundPorts: []string{"443"},
	ExcludeOutboundCIDRs: []string{"10.248.1.0/24", "fd00:249::/64"},
	ExcludeUIDs:          []string{"1000"},
}

func mustPlan(t *testing.T, c Config) *Plan {
	t.Helper()
	p, err := c.Validate()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTraffic proves the rules with real connections in real namespaces:
// who is redirected, who is not, and that the proxy learns the original
// destination.
func TestTraffic(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			n := netnstest.NewNet(t)
			a := be.a
			a.LockDir = t.TempDir()
			if err := a.Apply(n.Pod.Path(), mustPlan(t, trafficConfig), []Family{IPv4, IPv6}); err != nil {
				t.Fatal(err)
			}
			netnstest.Serve(t, n.Pod, ":15001", "outbound")
			netnstest.Serve(t, n.Pod, ":20000", "inbound")
			netnstest.Serve(t, n.Pod, ":8080", "app")
			netnstest.Serve(t, n.Pod, ":9090", "app-excluded")
			netnstest.Serve(t, n.Pod, ":9999", "pod-local")
			netnstest.Serve(t, n.Peer, ":9999", "peer")
			netnstest.Serve(t, n.Peer, ":443", "peer-443")

			hp := netnstest.HostPort
			type dial struct {
				name string
				from ns.NetNS
				uid  uint32
				addr string
				want string
			}
			var cases []dial
			for _, fam := range []struct {
				tag                  string
				pod, peer, other, lo string
			}{
				{"v4", netnstest.PodIP4.String(), netnstest.PeerIP4.String(), netnstest.OtherIP4.String(), "127.0.0.5"},
				{"v6", netnstest.PodIP6.String(), netnstest.PeerIP6.String(), netnstest.OtherIP6.String(), "::1"},
			} {
				at := func(ip string, port int) string { return hp(mustAddr(t, ip), port) }
				cases = append(cases,
					dial{fam.tag + " app to peer is redirected", n.Pod, 1234, at(fam.peer, 9999), "outbound " + at(fam.peer, 9999)},
					dial{fam.tag + " root app is redirected too", n.Pod, 0, at(fam.peer, 9999), "outbound " + at(fam.peer, 9999)},
					dial{fam.tag + " proxy uid is not", n.Pod, 5995, at(fam.peer, 9999), "peer"},
					dial{fam.tag + " excluded uid is not", n.Pod, 1000, at(fam.peer, 9999), "peer"},
					dial{fam.tag + " excluded port is not", n.Pod, 1234, at(fam.peer, 443), "peer-443"},
					dial{fam.tag + " excluded CIDR is not", n.Pod, 1234, at(fam.other, 9999), "peer"},
					dial{fam.tag + " loopback is not", n.Pod, 1234, at(fam.lo, 9999), "pod-local"},
					dial{fam.tag + " own pod IP (via lo) is not", n.Pod, 1234, at(fam.pod, 9999), "pod-local"},
					dial{fam.tag + " inbound is redirected", n.Peer, 0, at(fam.pod, 8080), "inbound " + at(fam.pod, 8080)},
					dial{fam.tag + " excluded inbound port is not", n.Peer, 0, at(fam.pod, 9090), "app-excluded"},
				)
			}
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					got, err := netnstest.DialAs(t, c.from, c.uid, c.addr)
					if err != nil {
						t.Fatal(err)
					}
					if got != c.want && !strings.HasPrefix(got, c.want+" ") {
						t.Errorf("dial %s as uid %d reached %q, want %q", c.addr, c.uid, got, c.want)
					}
				})
			}
		})
	}
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func saveNat(t *testing.T, mode Mode, n ns.NetNS, f Family) string {
	t.Helper()
	out, err := Applier{Mode: mode}.run(n.Path(), f, "save", "", "-t", "nat")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func chainsOf(save string) []string { return parseSave(save).chains }

// expectNoChains fails the test if either family still has meshlet chains.
func expectNoChains(t *testing.T, mode Mode, n ns.NetNS, after string) {
	t.Helper()
	for _, f := range []Family{IPv4, IPv6} {
		if c := chainsOf(saveNat(t, mode, n, f)); len(c) > 0 {
			t.Errorf("%s: chains left after %s: %v", f, after, c)
		}
	}
}

func iptablesIn(t *testing.T, mode Mode, n ns.NetNS, args ...string) {
	t.Helper()
	bin := "iptables-" + string(mode)
	err := n.Do(func(ns.NetNS) error {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Errorf("%s %v: %v: %s", bin, args, err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestApplyTwiceRemoveTwice(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, be := range backends {
		mode := be.a.Mode
		t.Run(be.name, func(t *testing.T) {
			pod := netnstest.NewNS(t)
			a := be.a
			p := mustPlan(t, trafficConfig)
			fams := []Family{IPv4, IPv6}
			if _, err := a.Remove(pod.Path(), fams); err != nil {
				t.Fatalf("remove before apply: %v", err)
			}
			// A foreign rule in a built-in chain must survive everything.
			iptablesIn(t, mode, pod, "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN")
			if err := a.Apply(pod.Path(), p, fams); err != nil {
				t.Fatal(err)
			}
			first := saveNat(t, mode, pod, IPv4)
			if err := a.Apply(pod.Path(), p, fams); err != nil {
				t.Fatalf("second apply: %v", err)
			}
			if second := saveNat(t, mode, pod, IPv4); stripComments(second) != stripComments(first) {
				t.Errorf("second apply changed the rules:\nfirst\n%s\nsecond\n%s", first, second)
			}
			if err := a.Verify(pod.Path(), p, fams); err != nil {
				t.Errorf("verify after two applies: %v", err)
			}
			// A changed config replaces the old rules, DNS chain included.
			withDNS := trafficConfig
			withDNS.ConsulDNSIP = "10.248.0.1"
			p2 := mustPlan(t, withDNS)
			if err := a.Apply(pod.Path(), p2, fams); err != nil {
				t.Fatal(err)
			}
			if err := a.Verify(pod.Path(), p2, fams); err != nil {
				t.Errorf("verify after a changed config: %v", err)
			}
			if err := a.Apply(pod.Path(), p, fams); err != nil {
				t.Fatal(err)
			}
			if err := a.Verify(pod.Path(), p, fams); err != nil {
				t.Errorf("verify after dropping DNS: %v", err)
			}
			for i := 0; i < 2; i++ {
				if _, err := a.Remove(pod.Path(), fams); err != nil {
					t.Fatalf("remove #%d: %v", i+1, err)
				}
			}
			for _, f := range fams {
				save := saveNat(t, mode, pod, f)
				if c := chainsOf(save); len(c) > 0 {
					t.Errorf("%s: chains left after remove: %v", f, c)
				}
				if f == IPv4 && !strings.Contains(save, "-A OUTPUT -p udp -j RETURN") {
					t.Errorf("the foreign rule was removed:\n%s", save)
				}
			}
		})
	}
}

func stripComments(save string) string {
	var out []string
	for _, l := range strings.Split(save, "\n") {
		if !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestFailedApplyLeavesNothing(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, be := range backends {
		mode := be.a.Mode
		t.Run(be.name, func(t *testing.T) {
			pod := netnstest.NewNS(t)
			a := be.a
			p := mustPlan(t, trafficConfig)
			good4 := p.Rules(IPv4)
			broken := p.Rules(IPv6)
			// An invalid rule half-way through the family's transaction.
			mid := len(broken.Rules) / 2
			bad := Rule{Chain: ChainOutput, Target: "NO_SUCH_TARGET"}
			broken.Rules = slices.Insert(slices.Clone(broken.Rules), mid, bad)
			err := a.applyRulesets(pod.Path(), []Ruleset{good4, broken})
			if err == nil {
				t.Fatal("apply with an invalid rule succeeded")
			}
			if !strings.Contains(err.Error(), "IPv6") {
				t.Errorf("error does not name the family: %v", err)
			}
			expectNoChains(t, mode, pod, "a failed apply")
			// A failed replace of earlier rules leaves none either.
			if err := a.Apply(pod.Path(), p, []Family{IPv4, IPv6}); err != nil {
				t.Fatal(err)
			}
			if err := a.applyRulesets(pod.Path(), []Ruleset{good4, broken}); err == nil {
				t.Fatal("replace with an invalid rule succeeded")
			}
			expectNoChains(t, mode, pod, "a failed replace")
		})
	}
}

func TestVerifyDetectsDrift(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, be := range backends {
		mode := be.a.Mode
		t.Run(be.name, func(t *testing.T) {
			pod := netnstest.NewNS(t)
			a := be.a
			p := mustPlan(t, trafficConfig)
			fams := []Family{IPv4}
			if err := a.Apply(pod.Path(), p, fams); err != nil {
				t.Fatal(err)
			}
			if err := a.Verify(pod.Path(), p, fams); err != nil {
				t.Fatalf("fresh rules do not verify: %v", err)
			}
			iptablesIn(t, mode, pod, "-t", "nat", "-D", ChainOutput, "-o", "lo", "-m", "comment", "--comment", "meshlet/via-lo", "-j", "RETURN")
			err := a.Verify(pod.Path(), p, fams)
			if err == nil || !strings.Contains(err.Error(), `missing "-A CONSUL_PROXY_OUTPUT -o lo -m comment --comment \"meshlet/via-lo\" -j RETURN"`) {
				t.Errorf("deleted rule: verify said %v", err)
			}
			if err := a.Apply(pod.Path(), p, fams); err != nil {
				t.Fatal(err)
			}
			iptablesIn(t, mode, pod, "-t", "nat", "-I", ChainInbound, "-p", "tcp", "--dport", "22", "-j", "RETURN")
			err = a.Verify(pod.Path(), p, fams)
			if err == nil || !strings.Contains(err.Error(), `unexpected "-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 22 -j RETURN"`) {
				t.Errorf("added rule: verify said %v", err)
			}
			if err := a.Apply(pod.Path(), p, fams); err != nil {
				t.Fatal(err)
			}
			iptablesIn(t, mode, pod, "-t", "nat", "-A", "PREROUTING", "-j", ChainInbound)
			if err := a.Verify(pod.Path(), p, fams); err == nil {
				t.Error("an extra jump into our chain verified")
			}
		})
	}
}

// TestNetlinkEncodesLikeIptablesNFT: for every rule shape, the rules
// meshlet programs over netlink are, expression for expression, those that
// iptables-nft-restore programs from the same text; iptables-nft-save reads
// them back exactly as rendered.
func TestNetlinkEncodesLikeIptablesNFT(t *testing.T) {
	netnstest.RequireRoot(t)
	cfgs := map[string]Config{
		"every shape": {ProxyUserID: "5995", ProxyInboundPort: 20000, ProxyOutboundPort: 15001,
			ExcludeInboundPorts:  []string{"21000", "8000:8100"},
			ExcludeOutboundPorts: []string{"443", "9000-9100"},
			ExcludeOutboundCIDRs: []string{"172.16.0.0/12", "10.96.0.1", "100.64.0.0/10", "0.0.0.0/0", "fd00:10:96::/108", "2001:db8::/32", "::/0"},
			ExcludeUIDs:          []string{"1000", "2000-2010"},
			ConsulDNSIP:          "10.96.0.53", ConsulDNSPort: 8600},
		"dns v6":    {ProxyUserID: "5995", ProxyInboundPort: 20000, ProxyOutboundPort: 15001, ConsulDNSIP: "fd00::53"},
		"dns every": {ProxyUserID: "5995", ProxyInboundPort: 20000, ProxyOutboundPort: 15001, ConsulDNSIP: "10.96.0.53"},
	}
	for name, cfg := range cfgs {
		t.Run(name, func(t *testing.T) {
			p := mustPlan(t, cfg)
			fams := []Family{IPv4, IPv6}
			viaNetlink, viaRestore := netnstest.NewNS(t), netnstest.NewNS(t)
			if err := netlinkSync(viaNetlink.Path(), []Ruleset{p.Rules(IPv4), p.Rules(IPv6)}); err != nil {
				t.Fatalf("netlink apply: %v", err)
			}
			if err := (Applier{Mode: ModeNFT, NoNetlink: true}).Apply(viaRestore.Path(), p, fams); err != nil {
				t.Fatalf("iptables-nft-restore apply: %v", err)
			}
			for _, f := range fams {
				got, want := dumpNat(t, viaNetlink, f), dumpNat(t, viaRestore, f)
				if !slices.Equal(got, want) {
					t.Errorf("%s: netlink encodes differently from iptables-nft:\n%s", f, lineDiff(got, want))
				}
			}
			if err := (Applier{Mode: ModeNFT}).Verify(viaNetlink.Path(), p, fams); err != nil {
				t.Fatalf("iptables-nft-save reads the netlink rules differently: %v", err)
			}
		})
	}
}

// TestNetlinkTransactionIsAtomic: a rule the kernel refuses (a jump to a
// chain that does not exist) fails the whole transaction, both families,
// and an earlier ruleset stays as it was.
func TestNetlinkTransactionIsAtomic(t *testing.T) {
	netnstest.RequireRoot(t)
	pod := netnstest.NewNS(t)
	p := mustPlan(t, trafficConfig)
	if err := netlinkSync(pod.Path(), []Ruleset{p.Rules(IPv4)}); err != nil {
		t.Fatal(err)
	}
	before4 := dumpNat(t, pod, IPv4)
	broken := p.Rules(IPv4)
	broken.Rules = append(slices.Clone(broken.Rules), Rule{Chain: ChainOutput, Target: ChainDNS})
	err := netlinkSync(pod.Path(), []Ruleset{p.Rules(IPv6), broken})
	if err == nil {
		t.Fatal("a transaction with a jump to a missing chain succeeded")
	}
	if after := dumpNat(t, pod, IPv4); !slices.Equal(after, before4) {
		t.Errorf("IPv4 changed by a failed transaction:\n%s", lineDiff(after, before4))
	}
	if c := chainsOf(saveNat(t, ModeNFT, pod, IPv6)); len(c) > 0 {
		t.Errorf("IPv6 chains created by a failed transaction: %v", c)
	}
}

func lineDiff(got, want []string) string {
	var b strings.Builder
	for _, l := range want {
		if !slices.Contains(got, l) {
			b.WriteString("  want " + l + "\n")
		}
	}
	for _, l := range got {
		if !slices.Contains(want, l) {
			b.WriteString("  got  " + l + "\n")
		}
	}
	if b.Len() == 0 {
		return "  same rules, different order"
	}
	return b.String()
}

// dumpNat lists the nat table's chains and rules of a family as the kernel
// holds them: one line per chain (with its hook) and per rule, expressions
// spelled out, handles and counter values left out.
func dumpNat(t *testing.T, n ns.NetNS, f Family) []string {
	t.Helper()
	fd, err := os.Open(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(fd.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	chains, err := conn.ListChainsOfTableFamily(tableFamily(f))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range chains {
		if c.Table.Name != "nat" {
			continue
		}
		hook := "-"
		if c.Hooknum != nil {
			hook = fmt.Sprintf("hook %d prio %d", *c.Hooknum, *c.Priority)
		}
		out = append(out, fmt.Sprintf("chain %s %s", c.Name, hook))
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			line := "  " + c.Name + ":"
			for _, e := range r.Exprs {
				switch x := e.(type) {
				case *expr.Counter:
					line += " counter"
				case *expr.Match:
					line += fmt.Sprintf(" match(%s/%d %x)", x.Name, x.Rev, marshalInfo(t, f, x.Rev, x.Info))
				case *expr.Target:
					line += fmt.Sprintf(" target(%s/%d %x)", x.Name, x.Rev, marshalInfo(t, f, x.Rev, x.Info))
				default:
					line += fmt.Sprintf(" %T%+v", e, e)
				}
			}
			out = append(out, line+fmt.Sprintf(" udata=%x", r.UserData))
		}
	}
	slices.Sort(out)
	return out
}

func marshalInfo(t *testing.T, f Family, rev uint32, info xt.InfoAny) []byte {
	t.Helper()
	b, err := xt.Marshal(xt.TableFamily(tableFamily(f)), rev, info)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNetlinkTakesOverRestoreRules: rules iptables-nft-restore wrote (the
// fallback path, or an earlier meshlet without comments) are replaced and
// removed by the netlink transaction, foreign rules left alone.
func TestNetlinkTakesOverRestoreRules(t *testing.T) {
	netnstest.RequireRoot(t)
	p := mustPlan(t, goldenConfigs["dns"])
	fams := []Family{IPv4, IPv6}
	old := Ruleset{Family: IPv4}
	for _, r := range p.Rules(IPv4).Rules {
		r.Comment = ""
		old.Rules = append(old.Rules, r)
	}
	old.Chains = p.Rules(IPv4).Chains
	pod := netnstest.NewNS(t)
	restore := Applier{Mode: ModeNFT, NoNetlink: true}
	if err := restore.applyRulesets(pod.Path(), []Ruleset{old}); err != nil {
		t.Fatal(err)
	}
	iptablesIn(t, ModeNFT, pod, "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN")
	// Any exec would mean netlink gave up and iptables-restore did it.
	nl := Applier{Mode: ModeNFT, Runner: noExec{t}}
	if err := nl.Apply(pod.Path(), p, fams); err != nil {
		t.Fatal(err)
	}
	if err := restore.Verify(pod.Path(), p, fams); err != nil {
		t.Errorf("after netlink replaced restore's rules: %v", err)
	}
	if _, err := nl.Remove(pod.Path(), fams); err != nil {
		t.Fatal(err)
	}
	expectNoChains(t, ModeNFT, pod, "netlink remove")
	if save := saveNat(t, ModeNFT, pod, IPv4); !strings.Contains(save, "-A OUTPUT -p udp -j RETURN") {
		t.Errorf("the foreign rule was removed:\n%s", save)
	}
}

// noExec is a Runner that fails the test: the netlink path must do it all.
type noExec struct{ t *testing.T }

func (n noExec) Run(netns string, c Command) (string, error) {
	n.t.Errorf("exec'd %s %v in %s: netlink fell back", c.Tool, c.Args, netns)
	return "", fmt.Errorf("no exec in this test")
}

// noTools is a Runner as in an image without the iptables tools.
type noTools struct{}

func (noTools) Run(string, Command) (string, error) {
	return "", fmt.Errorf("iptables-nft-save not found (PATH or /usr/sbin, /sbin): install iptables")
}

// TestNetlinkVerifyWithoutTools: the nft backend verifies over netlink
// alone (the node agent's image has no iptables tools): rules written by
// iptables-nft-restore (as an older plugin did) or by netlink verify; a
// deleted rule, an added one, a jump from elsewhere and a bare netns do
// not.
func TestNetlinkVerifyWithoutTools(t *testing.T) {
	netnstest.RequireRoot(t)
	p := mustPlan(t, trafficConfig)
	fams := []Family{IPv4, IPv6}
	bare := Applier{Mode: ModeNFT, Runner: noTools{}}
	for _, writer := range []Applier{{Mode: ModeNFT}, {Mode: ModeNFT, NoNetlink: true}} {
		pod := netnstest.NewNS(t)
		if err := writer.Apply(pod.Path(), p, fams); err != nil {
			t.Fatal(err)
		}
		if err := bare.Verify(pod.Path(), p, fams); err != nil {
			t.Fatalf("rules written with NoNetlink=%v do not verify over netlink: %v", writer.NoNetlink, err)
		}
	}
	pod := netnstest.NewNS(t)
	if err := bare.Verify(pod.Path(), p, fams); err == nil || !strings.Contains(err.Error(), "missing chain "+ChainOutput) {
		t.Fatalf("bare netns: %v", err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"deleted", []string{"-D", ChainOutput, "-o", "lo", "-m", "comment", "--comment", "meshlet/via-lo", "-j", "RETURN"},
			`missing "-A CONSUL_PROXY_OUTPUT -o lo -m comment --comment \"meshlet/via-lo\" -j RETURN"`},
		{"added", []string{"-I", ChainInbound, "-p", "tcp", "--dport", "22", "-j", "RETURN"}, "unexpected rule in " + ChainInbound},
		{"extra jump", []string{"-A", "PREROUTING", "-j", ChainInbound}, "unexpected rule in PREROUTING"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := (Applier{Mode: ModeNFT}).Apply(pod.Path(), p, fams); err != nil {
				t.Fatal(err)
			}
			iptablesIn(t, ModeNFT, pod, append([]string{"-t", "nat"}, tc.args...)...)
			if err := bare.Verify(pod.Path(), p, fams); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("verify said %v, want %q", err, tc.want)
			}
		})
	}
}
