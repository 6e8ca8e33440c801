package iptables

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
)

// Applier applies, verifies and removes rulesets inside network namespaces.
// On the nft backend every family changes in one nf_tables transaction over
// netlink; where that cannot be used, and on the legacy backend, each
// family is one iptables-restore.
type Applier struct {
	Mode Mode
	// LockDir holds one xtables lock per netns for the legacy backend, so
	// pods on one node never serialize on the global /run/xtables.lock
	// (their tables are per-netns anyway). Empty: the global lock.
	LockDir string
	// NoNetlink makes the nft backend use iptables-restore too.
	NoNetlink bool
	// Runner runs the iptables tools; nil: exec them in the netns.
	Runner Runner
	// netlink replaces netlinkSync in tests.
	netlink func(netns string, sets []Ruleset) error
}

func (a Applier) runner() Runner {
	if a.Runner != nil {
		return a.Runner
	}
	return ExecRunner{}
}

func (a Applier) sync(netns string, sets []Ruleset) error {
	if a.netlink != nil {
		return a.netlink(netns, sets)
	}
	return netlinkSync(netns, sets)
}

func (a Applier) run(netns string, f Family, op, stdin string, args ...string) (string, error) {
	env, err := a.lockEnv(netns)
	if err != nil {
		return "", err
	}
	cmd := Command{Tool: a.tool(f, op), Args: args, Stdin: stdin, Env: env}
	return a.runner().Run(netns, cmd)
}

// Ready reports whether the tools for every family are installed.
func (a Applier) Ready() error {
	var errs []error
	for _, f := range []Family{IPv4, IPv6} {
		for _, op := range []string{"restore", "save"} {
			if _, err := lookTool(a.tool(f, op)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (a Applier) save(netns string, f Family) (liveState, error) {
	out, err := a.run(netns, f, "save", "", "-t", "nat")
	if err != nil {
		return liveState{}, err
	}
	return parseSave(out), nil
}

func (a Applier) restore(netns string, f Family, input string) error {
	_, err := a.run(netns, f, "restore", input, "--noflush", "--wait")
	return err
}

// Apply installs the plan's rules for the given families in the netns,
// replacing any earlier meshlet rules. A failed Apply leaves none of
// meshlet's rules: the netlink transaction is all or nothing, and on the
// restore path the families applied so far (and any earlier rules of the
// failing one) are removed.
func (a Applier) Apply(netns string, p *Plan, families []Family) error {
	sets := make([]Ruleset, 0, len(families))
	for _, f := range families {
		sets = append(sets, p.Rules(f))
	}
	return a.applyRulesets(netns, sets)
}

func (a Applier) applyRulesets(netns string, sets []Ruleset) error {
	var nlErr error
	if a.useNetlink() {
		if nlErr = a.sync(netns, sets); nlErr == nil {
			return nil
		}
		// The transaction left nothing; iptables-restore gets its turn.
	}
	for i, rs := range sets {
		if err := a.restoreFamily(netns, rs); err != nil {
			// Roll back every family touched, the failing one too: a failed
			// replace would otherwise leave the previous rules in place.
			for _, d := range sets[:i+1] {
				if rerr := a.removeFamily(netns, d.Family); rerr != nil {
					err = errors.Join(err, fmt.Errorf("roll back %s: %w", d.Family, rerr))
				}
			}
			if nlErr != nil {
				err = errors.Join(fmt.Errorf("netlink: %w", nlErr), err)
			}
			return fmt.Errorf("apply %s rules: %w", rs.Family, err)
		}
	}
	return nil
}

// restoreFamily is one iptables-restore that creates the ruleset; when the
// netns already has meshlet chains ("-N" fails) it reads them and replaces
// them in a second one.
func (a Applier) restoreFamily(netns string, rs Ruleset) error {
	err := a.restore(netns, rs.Family, rs.restoreInput())
	if err == nil {
		return nil
	}
	live, serr := a.save(netns, rs.Family)
	if serr != nil {
		return errors.Join(err, serr)
	}
	if live.empty() {
		return err // a real failure; the transaction left nothing behind
	}
	return a.restore(netns, rs.Family, rs.replaceInput(live))
}

// Remove deletes meshlet's rules for the given families; a netns without
// them is left as it is. A family whose tables the kernel does not offer
// (IPv6 disabled at boot, no ip6_tables) holds no rules: it is skipped and
// returned in skipped, so that DEL does not fail, and get retried, forever.
func (a Applier) Remove(netns string, families []Family) (skipped []Family, err error) {
	if slices.Contains(families, IPv6) && !ipv6Enabled() {
		families = slices.DeleteFunc(slices.Clone(families), func(f Family) bool { return f == IPv6 })
		skipped = append(skipped, IPv6)
	}
	var errs []error
	if a.useNetlink() {
		sets := make([]Ruleset, 0, len(families))
		for _, f := range families {
			sets = append(sets, Ruleset{Family: f})
		}
		nlErr := a.sync(netns, sets)
		if nlErr == nil {
			return skipped, nil
		}
		defer func() {
			if err != nil {
				err = errors.Join(fmt.Errorf("netlink: %w", nlErr), err)
			}
		}()
	}
	for _, f := range families {
		err := a.removeFamily(netns, f)
		var te *ToolError
		switch {
		case err == nil:
		case errors.As(err, &te) && te.FamilyUnavailable():
			skipped = append(skipped, f)
		default:
			errs = append(errs, fmt.Errorf("remove %s rules: %w", f, err))
		}
	}
	return skipped, errors.Join(errs...)
}

// ipv6Sysctls is absent when the kernel was booted with ipv6.disable=1: no
// IPv6 netfilter then, and no need to exec a tool to find that out.
var ipv6Sysctls = "/proc/sys/net/ipv6"

func ipv6Enabled() bool {
	_, err := os.Stat(ipv6Sysctls)
	return err == nil
}

func (a Applier) removeFamily(netns string, f Family) error {
	live, err := a.save(netns, f)
	if err != nil || live.empty() {
		return err
	}
	return a.restore(netns, f, removeInput(live))
}

// Verify compares the live rules of each family with the plan's, and
// reports every missing or unexpected rule. A nil plan expects none.
func (a Applier) Verify(netns string, p *Plan, families []Family) error {
	var errs []error
	for _, f := range []Family{IPv4, IPv6} {
		want := Ruleset{Family: f}
		if p != nil && slices.Contains(families, f) {
			want = p.Rules(f)
		}
		err := a.verifyFamily(netns, want)
		if err != nil && !slices.Contains(families, f) && !isDiff(err) {
			continue // a family the pod does not use may be unsupported
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
		}
	}
	return errors.Join(errs...)
}

// verifyFamily checks one family. The nft backend reads the kernel over
// netlink, as it writes, so that no iptables tools are needed; a
// difference is then described again from iptables-save where the tools
// exist, in the words users know. Where netlink fails, the tools decide.
func (a Applier) verifyFamily(netns string, want Ruleset) error {
	if a.useNetlink() {
		err := netlinkVerify(netns, want)
		if err == nil {
			return nil
		}
		live, serr := a.save(netns, want.Family)
		switch {
		case serr != nil && isDiff(err):
			return err // no tools: the netlink description
		case serr != nil:
			return fmt.Errorf("%w (and iptables-save: %w)", err, serr)
		}
		if derr := diff(want, live); derr != nil || !isDiff(err) {
			return derr
		}
		return err
	}
	live, err := a.save(netns, want.Family)
	if err != nil {
		return err
	}
	return diff(want, live)
}

// ErrRulesDiffer is what Verify's errors wrap when the live rules differ
// from the plan, as against a failure to read them: a caller that acts
// on a difference (the agent's repair) must never act on a broken tool.
var ErrRulesDiffer = errors.New("live rules differ from the redirect config")

func isDiff(err error) bool { return errors.Is(err, ErrRulesDiffer) }

// diff compares chains and, per chain, the rule sequence.
func diff(want Ruleset, live liveState) error {
	var problems []string
	for _, c := range want.Chains {
		if !slices.Contains(live.chains, c) {
			problems = append(problems, "missing chain "+c)
		}
	}
	for _, c := range live.chains {
		if !slices.Contains(want.Chains, c) {
			problems = append(problems, "unexpected chain "+c)
		}
	}
	wantBy, liveBy := byChain(want.Lines()), byChain(live.rules)
	for chain, rules := range wantBy {
		if !slices.Equal(rules, liveBy[chain]) {
			problems = append(problems, describe(chain, rules, liveBy[chain])...)
		}
	}
	for chain, rules := range liveBy {
		if _, ok := wantBy[chain]; !ok {
			problems = append(problems, describe(chain, nil, rules)...)
		}
	}
	if len(problems) == 0 {
		return nil
	}
	slices.Sort(problems)
	return fmt.Errorf("%w: %s", ErrRulesDiffer, strings.Join(problems, "; "))
}

func byChain(rules []string) map[string][]string {
	out := map[string][]string{}
	for _, r := range rules {
		f := strings.Fields(r)
		out[f[1]] = append(out[f[1]], r)
	}
	return out
}

func describe(chain string, want, live []string) []string {
	var out []string
	for _, r := range want {
		if !slices.Contains(live, r) {
			out = append(out, fmt.Sprintf("missing %q", r))
		}
	}
	for _, r := range live {
		if !slices.Contains(want, r) {
			out = append(out, fmt.Sprintf("unexpected %q", r))
		}
	}
	if len(out) == 0 {
		out = append(out, "rules of "+chain+" out of order")
	}
	return out
}
