// Package perrule applies a ruleset the way consul-k8s' CNI plugin does,
// one `nsenter --net=… iptables -t nat …` process per chain and per rule:
// the baseline meshlet-cni's ADD benchmarks are measured against, in the
// same run (test/e2e and cmd/meshlet-cni).
package perrule

import (
	"fmt"
	"os/exec"
	"strings"

	"github.com/meshlet/meshlet/iptables"
)

// Apply writes rs into the netns at path netns, one process per chain and
// per rule.
func Apply(netns string, rs iptables.Ruleset) error {
	var cmds [][]string
	for _, c := range rs.Chains {
		cmds = append(cmds, []string{"-N", c})
	}
	for _, r := range rs.Lines() {
		// Rule comments are one quoted word: drop the quotes a shell would.
		args := strings.Fields(r)
		for i := range args {
			args[i] = strings.Trim(args[i], `"`)
		}
		cmds = append(cmds, args)
	}
	for _, args := range cmds {
		argv := append([]string{"--net=" + netns, "iptables", "-t", "nat"}, args...)
		if out, err := exec.Command("nsenter", argv...).CombinedOutput(); err != nil {
			return fmt.Errorf("nsenter %v: %w: %s", argv, err, out)
		}
	}
	return nil
}
