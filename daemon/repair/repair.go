package repair

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshlet/meshlet/iptables"
)

// Repairer checks and repairs pods' redirection on this node. Its methods
// may be called concurrently; it must not be copied after first use.
type Repairer struct {
	// Mode decides between repair, delete and report ("": auto).
	Mode Mode
	// IptablesMode and LockDir as in meshlet-cni's configuration
	// (iptables_mode, lock_dir), so that the node agent writes the rules the
	// way the plugin does.
	IptablesMode string
	LockDir      string
	// Node is this node's name, for the Events.
	Node string

	mu       sync.Mutex
	resolved *iptables.Applier
}

// applier resolves the backend on first use, as meshlet-cni's hostApplier
// does; a failed detection is retried on the next call.
func (r *Repairer) applier() (iptables.Applier, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.resolved == nil {
		mode, err := iptables.ParseMode(r.IptablesMode)
		if err != nil {
			return iptables.Applier{}, err
		}
		r.resolved = &iptables.Applier{Mode: mode, LockDir: r.LockDir}
	}
	return *r.resolved, nil
}

// Finding is what Inspect found about one pod, and what to do about it.
type Finding struct {
	Pod types.NamespacedName
	UID types.UID
	Decision
	Verdict Verdict
	// Missing: the netns holds none of meshlet's rules, the mark of a pod
	// that started before meshlet-cni was chained; false when rules are
	// there but differ.
	Missing bool
	// Problem is what is wrong: Verify's differences, or why the redirect
	// config is invalid. nil when the rules are in place.
	Problem  error
	Netns    Netns
	Plan     *iptables.Plan
	Families []iptables.Family
	// Node is the Repairer's, for the Event.
	Node string
	// Braked: a deletion turned into a repair in place by the Brake.
	Braked bool
}

// Inspect decides what pod needs. The error is for a pod that could not be
// checked (no process found, the iptables tools failing); its Finding's
// action is then none, and the node agent tries again on its next pass.
func (r *Repairer) Inspect(pod *corev1.Pod, ix *Index) (Finding, error) {
	f := Finding{Pod: types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}, UID: pod.UID, Node: r.Node}
	if why := skipReason(pod); why != "" {
		f.Decision = Decision{ActionNone, why}
		return f, nil
	}
	plan, err := iptables.RedirectPlan(pod.Annotations)
	if err != nil {
		f.Verdict, f.Problem = Invalid, err
		f.Decision = Decide(pod, f.Verdict, r.Mode)
		return f, nil
	}
	fail := func(err error) (Finding, error) {
		f.Decision = Decision{ActionNone, "not checked"}
		return f, fmt.Errorf("pod %s: %w", f.Pod, err)
	}
	if f.Families, err = Families(pod); err != nil {
		return fail(err)
	}
	f.Plan = plan
	if f.Netns, err = ix.Netns(cgroupUID(pod)); err != nil {
		return fail(err)
	}
	diff, err := r.Check(f.Netns, plan, f.Families)
	if err != nil {
		return fail(err)
	}
	f.Verdict = Protected
	if diff != nil {
		f.Verdict, f.Problem = Unprotected, diff
		// Which of two stories it is: none of meshlet's rules (the pod
		// started before the plugin), or rules that differ.
		none, err := r.Check(f.Netns, nil, nil)
		if err != nil {
			return fail(err)
		}
		f.Missing = none == nil
	}
	f.Decision = Decide(pod, f.Verdict, r.Mode)
	return f, nil
}

// cgroupUID is the UID kubelet names the pod's cgroup after: a static
// pod's own (its manifest's hash, which its mirror carries), else the API
// object's.
func cgroupUID(pod *corev1.Pod) types.UID {
	if h := pod.Annotations[mirrorAnnotation]; h != "" {
		return types.UID(h)
	}
	return pod.UID
}

// Fix carries out an ActionRepair finding: the rules applied in the pod's
// running netns, then verified. Other actions are not Fix's: deleting the
// pod and reporting are the node agent's.
func (r *Repairer) Fix(f Finding) error {
	if f.Action != ActionRepair {
		return fmt.Errorf("pod %s: the finding's action is %s, not %s", f.Pod, f.Action, ActionRepair)
	}
	if err := r.Repair(f.Netns, f.Plan, f.Families); err != nil {
		return fmt.Errorf("pod %s: %w", f.Pod, err)
	}
	return nil
}

// Check compares the live rules in n with the plan's for families (nil
// plan: none expected). diff is what differs, nil when nothing does; err
// is a check that could not be made (the netns is gone or changed, a tool
// failed), which says nothing about the rules.
func (r *Repairer) Check(n Netns, p *iptables.Plan, families []iptables.Family) (diff, err error) {
	err = r.inNetns(n, func(a iptables.Applier, path string) error {
		verr := a.Verify(path, p, families)
		if verr == nil || !onlyDifferences(verr) {
			return verr
		}
		diff = verr
		return nil
	})
	return diff, err
}

// Repair applies the plan's rules for families in n and verifies them.
func (r *Repairer) Repair(n Netns, p *iptables.Plan, families []iptables.Family) error {
	if p == nil {
		return fmt.Errorf("netns %s: no redirect plan to apply", n)
	}
	return r.inNetns(n, func(a iptables.Applier, path string) error {
		if err := a.Apply(path, p, families); err != nil {
			return err
		}
		if err := a.Verify(path, p, families); err != nil {
			return fmt.Errorf("rules applied but do not verify: %w", err)
		}
		return nil
	})
}

// inNetns runs fn on the netns n names, through a descriptor held open
// for the duration: n.Path names a process's netns, and a process can exit
// and its PID go to another process, of another netns (the host's, say),
// between the scan and now. The descriptor is checked to be n's netns, and
// /proc/self/fd/<fd> then names that netns and no other while fn runs.
func (r *Repairer) inNetns(n Netns, fn func(a iptables.Applier, path string) error) error {
	a, err := r.applier()
	if err != nil {
		return err
	}
	if n.Inode == 0 {
		return fmt.Errorf("netns %s: not identified (no inode)", n)
	}
	f, err := os.Open(n.Path)
	if err != nil {
		return fmt.Errorf("netns %s: %w", n, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("netns %s: %w", n, err)
	}
	if uint64(st.Dev) != n.Dev || st.Ino != n.Inode {
		return fmt.Errorf("netns %s: %s is now net:[%d]: the process exited and its PID was reused", n, n.Path, st.Ino)
	}
	// Never the host's, whatever found n: the node agent runs on the host
	// network, and a pod's rules there would capture the node's traffic.
	self, err := statNS("/proc/self/ns/net")
	if err != nil {
		return fmt.Errorf("netns %s: refused: cannot tell it from the agent's own: %w", n, err)
	}
	if self == (nsID{uint64(st.Dev), st.Ino}) {
		return fmt.Errorf("netns %s: refused: it is the agent's own, the host's", n)
	}
	if err := fn(a, fmt.Sprintf("/proc/self/fd/%d", f.Fd())); err != nil {
		return fmt.Errorf("netns %s: %w", n, err)
	}
	return nil
}

// onlyDifferences reports whether every error Verify joined is a
// difference in the rules.
func onlyDifferences(err error) bool {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if !onlyDifferences(e) {
				return false
			}
		}
		return true
	}
	// A tool failure must not pass for missing rules: on a node whose
	// iptables is broken, every injected pod would be deleted.
	return errors.Is(err, iptables.ErrRulesDiffer)
}
