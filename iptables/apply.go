package iptables

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Mode is the iptables backend: the one the host uses, so that rules in a
// pod are seen by the same tools as everything else on the node.
type Mode string

const (
	ModeNFT    Mode = "nft"
	ModeLegacy Mode = "legacy"
)

// Applier applies, verifies and removes rulesets inside network namespaces,
// one transaction per family: over netlink (nft, fresh netns) or with one
// iptables-restore.
type Applier struct {
	Mode Mode
	// LockDir holds one xtables lock per netns for the legacy backend, so
	// pods on one node never serialize on the global /run/xtables.lock
	// (their tables are per-netns anyway). Empty: the global lock.
	LockDir string
	// NoNetlink makes the nft backend apply through iptables-restore too
	// (by default a fresh netns is programmed over netlink).
	NoNetlink bool
}

// tool returns the path of iptables-restore/-save for a family and mode.
func (a Applier) tool(f Family, op string) (string, error) {
	base := "iptables"
	if f == IPv6 {
		base = "ip6tables"
	}
	name := fmt.Sprintf("%s-%s-%s", base, a.Mode, op)
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (PATH or /usr/sbin, /sbin): install iptables", name)
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// Ready reports whether the tools for every family are installed.
func (a Applier) Ready() error {
	var errs []error
	for _, f := range []Family{IPv4, IPv6} {
		for _, op := range []string{"restore", "save"} {
			if _, err := a.tool(f, op); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (a Applier) run(netns string, f Family, op string, stdin string, args ...string) (string, error) {
	bin, err := a.tool(f, op)
	if err != nil {
		return "", err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	if a.Mode == ModeLegacy && a.LockDir != "" {
		sum := sha256.Sum256([]byte(netns))
		cmd.Env = append(cmd.Env, fmt.Sprintf("XTABLES_LOCKFILE=%s/%x.lock", a.LockDir, sum[:8]))
		if err := os.MkdirAll(a.LockDir, 0o700); err != nil {
			return "", err
		}
	}
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	// The child inherits the network namespace of the locked thread.
	err = ns.WithNetNSPath(netns, func(ns.NetNS) error { return cmd.Run() })
	if err != nil {
		return "", fmt.Errorf("%s in %s: %w: %s", filepath.Base(bin), netns, err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
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
// replacing any earlier meshlet rules. Each family is one transaction; when
// one fails, the families applied so far (and any earlier rules of the
// failing one) are removed, so a failed Apply leaves none of meshlet's
// rules.
func (a Applier) Apply(netns string, p *Plan, families []Family) error {
	sets := make([]Ruleset, 0, len(families))
	for _, f := range families {
		sets = append(sets, p.Rules(f))
	}
	return a.applyRulesets(netns, sets)
}

func (a Applier) applyRulesets(netns string, sets []Ruleset) error {
	for i, rs := range sets {
		if err := a.applyFamily(netns, rs); err != nil {
			// Roll back every family touched, the failing one too: a failed
			// replace would otherwise leave the previous rules in place.
			for _, d := range sets[:i+1] {
				if rerr := a.removeFamily(netns, d.Family); rerr != nil {
					err = errors.Join(err, fmt.Errorf("roll back %s: %w", d.Family, rerr))
				}
			}
			return fmt.Errorf("apply %s rules: %w", rs.Family, err)
		}
	}
	return nil
}

func (a Applier) applyFamily(netns string, rs Ruleset) error {
	var nlErr error
	if a.Mode == ModeNFT && !a.NoNetlink && rs.netlinkCapable() {
		handled, err := applyNetlink(netns, rs)
		switch {
		case err == nil && handled:
			return nil
		case err == nil: // meshlet chains are there already
			return a.replace(netns, rs)
		}
		nlErr = err // the transaction left nothing; iptables-restore gets its turn
	}
	// One exec when the netns has none of our chains ("-N" fails otherwise).
	err := a.restore(netns, rs.Family, rs.restoreInput())
	if err == nil {
		return nil
	}
	if nlErr != nil {
		err = errors.Join(nlErr, err)
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

// replace swaps the live meshlet rules for rs in one transaction.
func (a Applier) replace(netns string, rs Ruleset) error {
	live, err := a.save(netns, rs.Family)
	if err != nil {
		return err
	}
	return a.restore(netns, rs.Family, rs.replaceInput(live))
}

// Remove deletes meshlet's rules for the given families; a netns without
// them is left as it is. A family whose tables the kernel does not offer
// holds no rules: it is skipped and returned in skipped.
func (a Applier) Remove(netns string, families []Family) (skipped []Family, err error) {
	var errs []error
	for _, f := range families {
		if err := a.removeFamily(netns, f); err != nil {
			errs = append(errs, fmt.Errorf("remove %s rules: %w", f, err))
		}
	}
	return nil, errors.Join(errs...)
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
		live, err := a.save(netns, f)
		if err != nil {
			if !slices.Contains(families, f) {
				continue // a family the pod does not use may be unsupported
			}
			errs = append(errs, err)
			continue
		}
		if err := diff(want, live); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
		}
	}
	return errors.Join(errs...)
}

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
	wantBy, liveBy := byChain(want.Rules), byChain(live.rules)
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
	return fmt.Errorf("live rules differ from the redirect config: %s", strings.Join(problems, "; "))
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
