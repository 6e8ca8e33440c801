package repair

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/iptables"
)

// saveStub answers iptables-save from canned output per tool: Inspect's
// decisions tested without root. The netns is a regular file of a fake
// /proc, which the identity check opens like a real one.
type saveStub struct {
	mu    sync.Mutex
	out   map[string]string // by tool: iptables-nft-save, ip6tables-nft-save
	err   map[string]error
	calls []string
}

func (s *saveStub) Run(netns string, c iptables.Command) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, c.Tool)
	if !strings.HasSuffix(c.Tool, "-save") {
		return "", fmt.Errorf("saveStub runs only -save, not %s", c.Tool)
	}
	if !strings.HasPrefix(netns, "/proc/self/fd/") {
		return "", fmt.Errorf("the tool got %s, not the held descriptor", netns)
	}
	if err := s.err[c.Tool]; err != nil {
		return "", err
	}
	return s.out[c.Tool], nil
}

// saveText is iptables-save's nat table holding rs.
func saveText(rs iptables.Ruleset) string {
	var b strings.Builder
	b.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n")
	for _, c := range rs.Chains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, l := range rs.Lines() {
		b.WriteString(l + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func planOf(t *testing.T, pod *corev1.Pod) *iptables.Plan {
	t.Helper()
	p, err := iptables.RedirectPlan(pod.Annotations)
	if err != nil || p == nil {
		t.Fatalf("plan: %v, %v", p, err)
	}
	return p
}

func TestInspect(t *testing.T) {
	pod := injectedPod()
	full := saveText(planOf(t, pod).Rules(iptables.IPv4))
	empty := saveText(iptables.Ruleset{})
	lines := strings.Split(full, "\n")
	drifted := strings.Join(slices.DeleteFunc(lines, func(l string) bool { return strings.Contains(l, "meshlet/via-lo") }), "\n")

	p := newFakeProc(t)
	p.proc(100, "0::/kubepods/besteffort/pod"+uid+"/"+cid+"\n", "pod")
	p.proc(500, "0::/kubepods/burstable/pod"+static+"/"+cid+"\n", "static")
	ix, err := Scan(p.root)
	if err != nil {
		t.Fatal(err)
	}
	const v4, v6 = "iptables-nft-save", "ip6tables-nft-save"
	notFound := errors.New("iptables-nft-save not found (PATH or /usr/sbin, /sbin): install iptables")
	for _, tc := range []struct {
		name    string
		pod     *corev1.Pod
		out     map[string]string
		err     map[string]error
		verdict Verdict
		missing bool
		action  Action
		fail    string // Inspect's error
		problem string
		saves   int // iptables-save runs
	}{
		{"rules in place", pod, map[string]string{v4: full, v6: empty}, nil, Protected, false, ActionNone, "", "", 2},
		{"no rules: started before the plugin", pod, map[string]string{v4: empty, v6: empty}, nil, Unprotected, true, ActionRepair, "",
			`missing "-A CONSUL_PROXY_OUTPUT -o lo`, 4},
		{"owned: deleted", injectedPod(controlled("ReplicaSet")), map[string]string{v4: empty, v6: empty}, nil, Unprotected, true, ActionDelete, "", "missing chain", 4},
		{"a rule missing: drift", pod, map[string]string{v4: drifted, v6: empty}, nil, Unprotected, false, ActionRepair, "",
			`missing "-A CONSUL_PROXY_OUTPUT -o lo -m comment --comment \"meshlet/via-lo\" -j RETURN"`, 4},
		{"rules in a family the pod lacks", pod, map[string]string{v4: full, v6: saveText(planOf(t, pod).Rules(iptables.IPv6))}, nil, Unprotected, false, ActionRepair, "",
			"IPv6: live rules differ", 4},
		{"IPv6 tables absent, pod IPv4 only", pod, map[string]string{v4: full}, map[string]error{v6: &iptables.ToolError{Tool: v6, Err: errors.New("exit status 1"), Stderr: "Address family not supported"}},
			Protected, false, ActionNone, "", "", 2},
		// A failure to read the rules says nothing about them: never a
		// reason to delete (a node with broken iptables would lose every
		// injected pod).
		{"iptables-save fails", pod, nil, map[string]error{v4: &iptables.ToolError{Tool: v4, Err: errors.New("exit status 4"), Stderr: "can't initialize"}, v6: nil},
			Unchecked, false, ActionNone, "can't initialize", "", 2},
		{"iptables-save fails, a difference too", pod, map[string]string{v6: saveText(planOf(t, pod).Rules(iptables.IPv6))}, map[string]error{v4: &iptables.ToolError{Tool: v4, Err: errors.New("exit status 4")}},
			Unchecked, false, ActionNone, "exit status 4", "", 2},
		{"iptables-save not installed", pod, nil, map[string]error{v4: notFound}, Unchecked, false, ActionNone, "not found", "", 2},
		{"static pod: found by its manifest hash, reported", injectedPod(controlled("Node"), func(p *corev1.Pod) { p.Annotations[mirrorAnnotation] = static }),
			map[string]string{v4: empty, v6: empty}, nil, Unprotected, true, ActionReport, "", "missing chain", 4},
		{"invalid config: reported, nothing read", injectedPod(func(p *corev1.Pod) { p.Annotations[contract.RedirectConfig] = `{"ProxyUserID":"x"}` }),
			nil, nil, Invalid, false, ActionReport, "", contract.RedirectConfig, 0},
		{"no process", injectedPod(func(p *corev1.Pod) { p.UID = "eeeeeeee-0000-4000-8000-000000000005" }), nil, nil,
			Unchecked, false, ActionNone, "no process of the pod", "", 0},
		{"finished: nothing read", injectedPod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), nil, nil,
			Unchecked, false, ActionNone, "", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stub := &saveStub{out: tc.out, err: tc.err}
			r := &Repairer{Node: "node-1", resolved: &iptables.Applier{Mode: iptables.ModeNFT, NoNetlink: true, Runner: stub}}
			f, err := r.Inspect(tc.pod, ix)
			if tc.fail != "" {
				if err == nil || !strings.Contains(err.Error(), tc.fail) || !strings.Contains(err.Error(), "pod shop/web") {
					t.Errorf("Inspect error = %v, want one naming the pod and saying %q", err, tc.fail)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if f.Verdict != tc.verdict || f.Missing != tc.missing || f.Action != tc.action {
				t.Errorf("Inspect = %s, missing %v, %s (%s); want %s, missing %v, %s", f.Verdict, f.Missing, f.Action, f.Why, tc.verdict, tc.missing, tc.action)
			}
			if tc.problem == "" && f.Problem != nil || tc.problem != "" && (f.Problem == nil || !strings.Contains(f.Problem.Error(), tc.problem)) {
				t.Errorf("Problem = %v, want …%s…", f.Problem, tc.problem)
			}
			if len(stub.calls) != tc.saves {
				t.Errorf("ran %v, want %d iptables-save", stub.calls, tc.saves)
			}
		})
	}
}

// The netns is opened and checked before anything reads or writes it: a
// PID reused by a process of another netns must not get the pod's rules.
func TestNetnsIdentity(t *testing.T) {
	p := newFakeProc(t)
	p.proc(100, "0::/kubepods/besteffort/pod"+uid+"/"+cid+"\n", "pod")
	ix, err := Scan(p.root)
	if err != nil {
		t.Fatal(err)
	}
	n, err := ix.Netns(uid)
	if err != nil {
		t.Fatal(err)
	}
	stubbed := func() (*Repairer, *saveStub) {
		// NoNetlink: every read and write goes through the stub, so a
		// broken guard cannot touch a real netns.
		stub := &saveStub{out: map[string]string{}}
		return &Repairer{resolved: &iptables.Applier{Mode: iptables.ModeNFT, NoNetlink: true, Runner: stub}}, stub
	}
	reused := n
	reused.Path = ix.netnsPath(1) // the host's
	unidentified := n
	unidentified.Inode = 0
	self, err := statNS("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		n    Netns
		want string
	}{
		"PID reused":     {reused, fmt.Sprintf("%s is now net:[%d]: the process exited and its PID was reused", reused.Path, p.inode("host"))},
		"no inode":       {unidentified, "not identified"},
		"process exited": {Netns{Path: p.root + "/999/ns/net", Dev: n.Dev, Inode: n.Inode}, "no such file"},
		"the host's":     {Netns{Path: "/proc/self/ns/net", Dev: self.dev, Inode: self.ino}, "refused: it is the agent's own, the host's"},
	} {
		t.Run(name, func(t *testing.T) {
			r, stub := stubbed()
			_, cerr := r.Check(tc.n, nil, nil)
			rerr := r.Repair(tc.n, planOf(t, injectedPod()), []iptables.Family{iptables.IPv4})
			for _, err := range []error{cerr, rerr} {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error = %v, want …%s…", err, tc.want)
				}
			}
			if len(stub.calls) > 0 {
				t.Errorf("ran %v in a netns that is not the pod's", stub.calls)
			}
		})
	}
	r, stub := stubbed()
	if _, err := r.Check(n, nil, nil); err != nil || len(stub.calls) != 2 {
		t.Errorf("the pod's own netns: %v, ran %v", err, stub.calls)
	}
}

func TestFixRepairsOnly(t *testing.T) {
	r := &Repairer{}
	for _, a := range []Action{ActionNone, ActionDelete, ActionReport} {
		f := Finding{Decision: Decision{Action: a}}
		f.Pod.Namespace, f.Pod.Name = "shop", "web"
		if err := r.Fix(f); err == nil || !strings.Contains(err.Error(), "pod shop/web: the finding's action is "+string(a)) {
			t.Errorf("Fix of a %s finding: %v", a, err)
		}
	}
}
