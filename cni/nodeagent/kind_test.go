package nodeagent

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// TestCheckKind: a request is a lookup or a sandbox notice, and its
// fields fit its kind; anything else is refused, naming the field and,
// for a kind it does not know, the kinds there are.
func TestCheckKind(t *testing.T) {
	ips := []string{"10.244.0.7"}
	tests := []struct {
		name    string
		req     Request
		wantErr string
	}{
		{"lookup", Request{Kind: KindLookup}, ""},
		{"sandbox notice", Request{Kind: KindSandbox, SandboxIPs: ips}, ""},
		{"unknown kind", Request{Kind: "poke"}, `"kind" is "poke", expected "lookup" or "sandbox"`},
		{"no kind", Request{}, `"kind" is missing, expected "lookup" or "sandbox"`},
		{"lookup with IPs", Request{Kind: KindLookup, SandboxIPs: ips}, `"kind" "lookup" with "sandboxIPs": only "sandbox" carries them`},
		{"sandbox notice without IPs", Request{Kind: KindSandbox}, `"kind" "sandbox" without "sandboxIPs"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.req.CheckKind()
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr) {
				t.Errorf("CheckKind: %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// TestAskRefusesBadKind: the client checks the kind before it dials, so
// a request the node agent would refuse is not sent at all.
func TestAskRefusesBadKind(t *testing.T) {
	_, err := Ask("/nonexistent/s.sock", Request{Kind: "poke", Namespace: "ns", Name: "web"}, roomy)
	if want := `invalid request: "kind" is "poke", expected "lookup" or "sandbox"`; err == nil || err.Error() != want {
		t.Errorf("Ask: %v, want %q", err, want)
	}
}

// v1NoKind is Request as meshlet-cni and the node agent had it before
// Kind, field for field.
type v1NoKind struct {
	Version    int      `json:"v"`
	Namespace  string   `json:"namespace"`
	Name       string   `json:"name"`
	UID        string   `json:"uid,omitempty"`
	SandboxIPs []string `json:"sandboxIPs,omitempty"`
}

// TestKindAcrossVersions: during a rollout a plugin and a node agent of
// either side of Kind meet on a node. A request from a plugin without
// Kind reads as the kind it meant (WithInferredKind); one with Kind
// reads as before to a node agent without it, which tells the kinds
// apart by SandboxIPs.
func TestKindAcrossVersions(t *testing.T) {
	tests := []struct {
		name string
		old  string // the line an old plugin sends
		kind Kind
	}{
		{"lookup", `{"v":1,"namespace":"ns","name":"web","uid":"u-web"}`, KindLookup},
		{"lookup, no uid", `{"v":1,"namespace":"ns","name":"web"}`, KindLookup},
		{"sandbox notice", `{"v":1,"namespace":"ns","name":"web","uid":"u-web","sandboxIPs":["10.244.0.7","fd00::7"]}`, KindSandbox},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// An old plugin to a new node agent.
			var req Request
			if err := Read(strings.NewReader(tc.old+"\n"), MaxRequest, &req); err != nil {
				t.Fatal(err)
			}
			if req.Kind != "" {
				t.Fatalf("kind %q read from a line without one", req.Kind)
			}
			req = req.WithInferredKind()
			if req.Kind != tc.kind || req.CheckKind() != nil {
				t.Errorf("inferred %+v (%v), want kind %q", req, req.CheckKind(), tc.kind)
			}
			if again := req.WithInferredKind(); !reflect.DeepEqual(again, req) {
				t.Errorf("a kind already set was changed: %+v", again)
			}

			// A new plugin to an old node agent: what it decodes is what
			// the old plugin sent.
			var want, got v1NoKind
			if err := json.Unmarshal([]byte(tc.old), &want); err != nil {
				t.Fatal(err)
			}
			b, err := json.Marshal(req)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &got); err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("an old node agent reads %s as %+v, %v; want %+v", b, got, err, want)
			}
			if !strings.Contains(string(b), `"kind":"`+string(tc.kind)+`"`) {
				t.Errorf("%s does not say its kind", b)
			}
		})
	}
	// A kind that is set is kept, even one that does not fit.
	if r := (Request{Kind: KindLookup, SandboxIPs: []string{"10.0.0.1"}}).WithInferredKind(); r.Kind != KindLookup {
		t.Errorf("kind %q, want it kept", r.Kind)
	}
}
