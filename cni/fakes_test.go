package cni

import (
	"fmt"
	"slices"

	"github.com/meshlet/meshlet/iptables"
)

// fakeLookup answers the pod lookup from fields and records each call.
type fakeLookup struct {
	ann   map[string]string
	from  string
	err   error
	panic any
	calls []string // "namespace/name"
	// notices records each sandboxUp as "namespace/name uid [ips]";
	// noticeErr is what sandboxUp returns.
	notices   []string
	noticeErr error
}

func (f *fakeLookup) sandboxUp(namespace, name, uid string, ips []string) error {
	f.notices = append(f.notices, fmt.Sprintf("%s/%s %s %v", namespace, name, uid, ips))
	return f.noticeErr
}

func (f *fakeLookup) annotations(namespace, name string) (map[string]string, string, error) {
	f.calls = append(f.calls, namespace+"/"+name)
	if f.panic != nil {
		panic(f.panic)
	}
	return f.ann, f.from, f.err
}

// fakeApplier keeps the families that have meshlet rules in live, as a
// netns would, and records each call.
type fakeApplier struct {
	live                           []iptables.Family
	applyErr, verifyErr, removeErr error
	skipped                        []iptables.Family  // what Remove reports skipped
	panicOn                        map[string]bool    // "Apply", "Verify", "Remove": panic there
	writeThenPanic                 bool               // Apply writes the rules, then panics
	onRemove                       func(netns string) // runs inside Remove, e.g. to delete the netns
	calls                          []applierCall
}

type applierCall struct {
	op    string
	netns string
	plan  *iptables.Plan
	fams  []iptables.Family
}

// String is how the table writes a call: op, plan (plan, nil or -) and
// families.
func (c applierCall) String() string {
	p := "-"
	switch {
	case c.op == "Remove":
	case c.plan == nil:
		p = "nil"
	default:
		p = "plan"
	}
	return fmt.Sprintf("%s %s %v", c.op, p, c.fams)
}

func (f *fakeApplier) record(op, netns string, p *iptables.Plan, fams []iptables.Family) {
	f.calls = append(f.calls, applierCall{op, netns, p, slices.Clone(fams)})
	if f.panicOn[op] {
		panic(op + " exploded")
	}
}

func (f *fakeApplier) Apply(netns string, p *iptables.Plan, fams []iptables.Family) error {
	f.record("Apply", netns, p, fams)
	if f.applyErr != nil {
		return f.applyErr // a failed Apply leaves no rules
	}
	f.live = slices.Clone(fams)
	if f.writeThenPanic {
		panic("Apply exploded after writing")
	}
	return nil
}

func (f *fakeApplier) Verify(netns string, p *iptables.Plan, fams []iptables.Family) error {
	f.record("Verify", netns, p, fams)
	return f.verifyErr
}

func (f *fakeApplier) Remove(netns string, fams []iptables.Family) ([]iptables.Family, error) {
	f.record("Remove", netns, nil, fams)
	if f.onRemove != nil {
		f.onRemove(netns)
	}
	if f.removeErr != nil {
		return f.skipped, f.removeErr
	}
	f.live = slices.DeleteFunc(f.live, func(x iptables.Family) bool { return slices.Contains(fams, x) })
	return f.skipped, nil
}

func (f *fakeApplier) Backend() iptables.Mode { return iptables.ModeNFT }
