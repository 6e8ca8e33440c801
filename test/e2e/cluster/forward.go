package cluster

import (
	"errors"
	"fmt"

	"github.com/coreos/go-iptables/iptables"
)

// forwardChain accepts what the node's pods send each other across the
// harness's bridge.
//
// With bridge-nf-call-iptables on (the harness sets it, and Docker loads
// br_netfilter), a packet bridged between two ports of Bridge traverses
// the host's filter FORWARD chain: pod to pod, and pod to a Service whose
// backend is on the node. A Docker engine sets that chain's policy to DROP
// when it starts, and other hosts' firewalls do the same, so the harness
// accepts its own bridge's traffic explicitly rather than relying on the
// policy. Traffic to the node's own address goes through INPUT, not
// FORWARD, and nothing else is accepted: pods still have no route off the
// machine.
const forwardChain = "MESHLET-HARNESS-FWD"

// forwardRules is forwardChain's content: in and out of the bridge, as
// kube-proxy's and Docker's own accept rules are scoped to their bridges.
func forwardRules() [][]string {
	return [][]string{{"-i", Bridge, "-o", Bridge, "-j", "ACCEPT"}}
}

// acceptBridgeForwarding creates forwardChain in both IP families and
// jumps to it first in FORWARD. cluster-down removes both
// (removeNewChains: the chain is in ownedChainPrefixes).
func acceptBridgeForwarding() error {
	var errs []error
	for _, fam := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.NewWithProtocol(fam)
		if err != nil {
			return fmt.Errorf("%s iptables: %w", famName(fam), err)
		}
		if err := ipt.ClearChain("filter", forwardChain); err != nil { // creates it
			errs = append(errs, fmt.Errorf("%s filter: chain %s: %w", famName(fam), forwardChain, err))
			continue
		}
		for _, r := range forwardRules() {
			if err := ipt.Append("filter", forwardChain, r...); err != nil {
				errs = append(errs, fmt.Errorf("%s filter %s: %w", famName(fam), forwardChain, err))
			}
		}
		if err := ipt.InsertUnique("filter", "FORWARD", 1, "-j", forwardChain); err != nil {
			errs = append(errs, fmt.Errorf("%s filter FORWARD: jump to %s: %w", famName(fam), forwardChain, err))
		}
	}
	return errors.Join(errs...)
}
