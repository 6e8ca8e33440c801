package iptables

import "strings"

// The iptables-restore path: inputs for one `iptables-restore --noflush`
// per family, and the parser of `iptables-save -t nat` that tells what of
// meshlet a netns holds. It serves the legacy backend, and the nft backend
// when the netlink transaction cannot be used.

// restoreInput creates the ruleset in a netns that has none of it: "-N"
// fails when a chain exists, so a second apply falls back to replaceInput
// instead of doubling the jumps.
func (rs Ruleset) restoreInput() string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, c := range rs.Chains {
		b.WriteString("-N " + c + "\n")
	}
	for _, r := range rs.Rules {
		b.WriteString(r.String() + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// replaceInput removes the live meshlet state (jumps and chains, as found
// in iptables-save) and installs rs, in one transaction.
func (rs Ruleset) replaceInput(live liveState) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, j := range live.jumps {
		b.WriteString("-D " + strings.TrimPrefix(j, "-A ") + "\n")
	}
	want := map[string]bool{}
	for _, c := range rs.Chains {
		want[c] = true
		// Declaring an existing chain under --noflush flushes it.
		b.WriteString(":" + c + " - [0:0]\n")
	}
	for _, c := range live.chains {
		if !want[c] {
			b.WriteString(":" + c + " - [0:0]\n-X " + c + "\n")
		}
	}
	for _, r := range rs.Rules {
		b.WriteString(r.String() + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// removeInput deletes the live meshlet state.
func removeInput(live liveState) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, j := range live.jumps {
		b.WriteString("-D " + strings.TrimPrefix(j, "-A ") + "\n")
	}
	for _, c := range live.chains {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	for _, c := range live.chains {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// liveState is meshlet's part of a nat table as iptables-save shows it.
type liveState struct {
	chains []string // owned chains that exist
	jumps  []string // rules in built-in chains that jump to an owned chain
	rules  []string // every rule in an owned chain, and the jumps
}

func (l liveState) empty() bool { return len(l.chains) == 0 && len(l.jumps) == 0 }

// parseSave extracts meshlet's state from iptables-save -t nat output.
func parseSave(out string) liveState {
	var l liveState
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			if name, _, _ := strings.Cut(line[1:], " "); owned(name) {
				l.chains = append(l.chains, name)
			}
		case strings.HasPrefix(line, "-A "):
			f := strings.Fields(line)
			if owned(f[1]) {
				l.rules = append(l.rules, line)
				continue
			}
			for i := 2; i+1 < len(f); i++ {
				if (f[i] == "-j" || f[i] == "-g") && owned(f[i+1]) {
					l.jumps = append(l.jumps, line)
					l.rules = append(l.rules, line)
					break
				}
			}
		}
	}
	return l
}
