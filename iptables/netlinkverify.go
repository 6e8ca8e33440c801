package iptables

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

// netlinkVerify is Verify for the nft backend over netlink: it reads the
// nat table from the kernel instead of running iptables-nft-save, so that
// a caller without the iptables tools (the node agent's image) can check
// a pod. The plan's rules are encoded as the netlink backend writes them
// and compared, expression by expression, with what the kernel holds in
// meshlet's chains and in the built-in chains' jumps to them.
func netlinkVerify(netns string, want Ruleset) error {
	conn, done, err := netlinkIn(netns)
	if err != nil {
		return err
	}
	defer done()
	fam := tableFamily(want.Family)
	chains, err := conn.ListChainsOfTableFamily(fam)
	if err != nil {
		return fmt.Errorf("%s in %s: list chains: %w", want.Family, netns, err)
	}
	var liveChains []string
	liveBy := map[string][]string{}
	for _, c := range chains {
		if c.Table.Name != "nat" || (!owned(c.Name) && c.Name != "PREROUTING" && c.Name != "OUTPUT") {
			continue
		}
		if owned(c.Name) {
			liveChains = append(liveChains, c.Name)
		}
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			return fmt.Errorf("%s in %s: read %s: %w", want.Family, netns, c.Name, err)
		}
		for _, r := range rules {
			if owned(c.Name) || jumpsToOwned(r) {
				liveBy[c.Name] = append(liveBy[c.Name], render(fam, r.Exprs))
			}
		}
	}
	wantBy, text := map[string][]string{}, map[string]string{}
	for _, r := range want.Rules {
		exprs, err := r.exprs(want.Family)
		if err != nil {
			return err
		}
		k := render(fam, exprs)
		wantBy[r.Chain] = append(wantBy[r.Chain], k)
		text[r.Chain+"\x00"+k] = r.String()
	}
	var problems []string
	for _, c := range want.Chains {
		if !slices.Contains(liveChains, c) {
			problems = append(problems, "missing chain "+c)
		}
	}
	for _, c := range liveChains {
		if !slices.Contains(want.Chains, c) {
			problems = append(problems, "unexpected chain "+c)
		}
	}
	for _, chain := range unionKeys(wantBy, liveBy) {
		w, l := wantBy[chain], liveBy[chain]
		if slices.Equal(w, l) {
			continue
		}
		n := len(problems)
		for _, k := range w {
			if !slices.Contains(l, k) {
				problems = append(problems, fmt.Sprintf("missing %q", text[chain+"\x00"+k]))
			}
		}
		for _, k := range l {
			if !slices.Contains(w, k) {
				problems = append(problems, "unexpected rule in "+chain+": "+k)
			}
		}
		if len(problems) == n {
			problems = append(problems, "rules of "+chain+" out of order")
		}
	}
	if len(problems) == 0 {
		return nil
	}
	slices.Sort(problems)
	return fmt.Errorf("%w: %s", ErrRulesDiffer, strings.Join(problems, "; "))
}

// render spells a rule's expressions out for comparison: xtables matches
// and targets by name, revision and encoded info, counters without their
// values, the rest field by field.
func render(fam nftables.TableFamily, exprs []expr.Any) string {
	var b strings.Builder
	for _, e := range exprs {
		switch x := e.(type) {
		case *expr.Counter:
			b.WriteString(" counter")
		case *expr.Match:
			fmt.Fprintf(&b, " match(%s/%d %s)", x.Name, x.Rev, infoHex(fam, x.Rev, x.Info))
		case *expr.Target:
			fmt.Fprintf(&b, " target(%s/%d %s)", x.Name, x.Rev, infoHex(fam, x.Rev, x.Info))
		default:
			fmt.Fprintf(&b, " %T%+v", e, e)
		}
	}
	return strings.TrimSpace(b.String())
}

func infoHex(fam nftables.TableFamily, rev uint32, info xt.InfoAny) string {
	if info == nil {
		return "-"
	}
	raw, err := xt.Marshal(xt.TableFamily(fam), rev, info)
	if err != nil {
		return "unencodable:" + err.Error()
	}
	return hex.EncodeToString(raw)
}

func unionKeys(a, b map[string][]string) []string {
	var out []string
	for k := range a {
		out = append(out, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}
