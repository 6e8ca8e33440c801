package repair

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
)

func TestEvent(t *testing.T) {
	diff := errors.New(`IPv4: live rules differ from the redirect config: missing "-A CONSUL_PROXY_OUTPUT -o lo -m comment --comment \"meshlet/via-lo\" -j RETURN"`)
	finding := func(a Action, why string, v Verdict, missing bool, problem error) Finding {
		return Finding{Decision: Decision{a, why}, Verdict: v, Missing: missing, Problem: problem, Node: "node-1"}
	}
	started := "pod started before meshlet-cni was installed on node node-1: its network namespace has none of meshlet's redirect rules"
	for _, tc := range []struct {
		name   string
		f      Finding
		result error
		reason string
		says   []string
	}{
		{"deleted", finding(ActionDelete, "", Unprotected, true, diff), nil, ReasonMissing,
			[]string{started, "; deleted so that its controller recreates it with redirection"}},
		{"repaired", finding(ActionRepair, "", Unprotected, true, diff), nil, ReasonMissing,
			[]string{started, "; repaired in place (connections opened before the repair bypass the proxy until they close)"}},
		{"reported, mode off", finding(ActionReport, "repair mode is off", Unprotected, true, diff), nil, ReasonMissing,
			[]string{started, "; not changed: repair mode is off"}},
		{"drift repaired", finding(ActionRepair, "", Unprotected, false, diff), nil, ReasonMissing,
			[]string{"the redirect rules in the pod's network namespace on node node-1 differ from its redirect config", `meshlet/via-lo`, "; repaired in place"}},
		{"invalid config", finding(ActionReport, "the redirect config is invalid: there is nothing to repair it to", Invalid, false, errors.New("annotation consul.hashicorp.com/redirect-traffic-config: ProxyUserID: not a number")), nil, ReasonMissing,
			[]string{"invalid redirect config", "ProxyUserID: not a number", "not changed: the redirect config is invalid"}},
		{"repair failed", finding(ActionRepair, "", Unprotected, true, diff), errors.New("iptables-nft-restore: exit status 1"), ReasonFailed,
			[]string{started, "; repair in place failed, retried on the agent's next pass: iptables-nft-restore: exit status 1"}},
		{"delete failed", finding(ActionDelete, "", Unprotected, true, diff), errors.New("pods \"web\" is forbidden"), ReasonFailed,
			[]string{"; delete failed, retried on the agent's next pass: pods \"web\" is forbidden"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.f.Event(tc.result)
			if e.Type != corev1.EventTypeWarning || e.Reason != tc.reason {
				t.Errorf("Event = %s %s, want Warning %s", e.Type, e.Reason, tc.reason)
			}
			for _, s := range tc.says {
				if !strings.Contains(e.Message, s) {
					t.Errorf("message does not say %q:\n%s", s, e.Message)
				}
			}
		})
	}
	if e := finding(ActionNone, "redirection in place", Protected, false, nil).Event(nil); e != (Event{}) {
		t.Errorf("a pod needing nothing gets an Event: %+v", e)
	}
}

// Verify lists every differing rule; the Event quotes a bounded part,
// never cut inside a character.
func TestEventBoundsTheProblem(t *testing.T) {
	long := errors.New(strings.Repeat("é", maxProblem))
	f := Finding{Decision: Decision{Action: ActionRepair}, Verdict: Unprotected, Problem: long, Node: "n"}
	m := f.Event(nil).Message
	if len(m) > maxProblem+300 || !strings.Contains(m, "…; repaired in place") {
		t.Errorf("message of %d bytes:\n%s", len(m), m)
	}
	if !utf8.ValidString(m) {
		t.Errorf("message cut inside a character: %q", m)
	}
}

func TestOutcome(t *testing.T) {
	failed := errors.New("x")
	for _, tc := range []struct {
		a      Action
		result error
		want   string
	}{
		{ActionRepair, nil, "repaired"}, {ActionDelete, nil, "deleted"}, {ActionReport, nil, "reported"},
		{ActionRepair, failed, "failed"}, {ActionDelete, failed, "failed"}, {ActionNone, nil, ""},
	} {
		if got := (Finding{Decision: Decision{Action: tc.a}}).Outcome(tc.result); got != tc.want {
			t.Errorf("Outcome of %s (%v) = %q, want %q", tc.a, tc.result, got, tc.want)
		}
	}
}

func TestDeleteOptions(t *testing.T) {
	f := Finding{UID: uid}
	o := f.DeleteOptions()
	if o.Preconditions == nil || o.Preconditions.UID == nil || *o.Preconditions.UID != uid {
		t.Errorf("DeleteOptions = %+v, want a precondition on UID %s", o, uid)
	}
}
