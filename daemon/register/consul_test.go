package register

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	capi "github.com/hashicorp/consul/api"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/contract"
)

// recordingRegisterer records what Register sends, failing on one ID.
type recordingRegisterer struct {
	calls  []string
	failOn string
}

func (r *recordingRegisterer) ServiceRegisterOpts(reg *capi.AgentServiceRegistration, opts capi.ServiceRegisterOpts) error {
	r.calls = append(r.calls, fmt.Sprintf("register %s replace-checks=%t", reg.ID, opts.ReplaceExistingChecks))
	if reg.ID == r.failOn {
		return fmt.Errorf("refused")
	}
	return nil
}

// Register, which the node agent and the proxy's tests use: the service
// before its proxy, checks replaced, each request observed, stopped at a
// failure.
func TestRegister(t *testing.T) {
	regs, err := For(pod(&contract.Registration{Port: 8080, DataPlane: "consul", TransparentProxy: true}), []*corev1.Service{web})
	if err != nil {
		t.Fatal(err)
	}
	svcID, proxyID := regs.Service.ID, regs.Proxy.ID
	for _, tc := range []struct {
		failOn   string
		calls    []string
		observed []bool // whether each request succeeded
	}{
		{"", []string{"register " + svcID + " replace-checks=true", "register " + proxyID + " replace-checks=true"}, []bool{true, true}},
		{svcID, []string{"register " + svcID + " replace-checks=true"}, []bool{false}},
		{proxyID, []string{"register " + svcID + " replace-checks=true", "register " + proxyID + " replace-checks=true"}, []bool{true, false}},
	} {
		r := &recordingRegisterer{failOn: tc.failOn}
		var observed []bool
		err := Register(r, regs, func(err error) { observed = append(observed, err == nil) })
		if (err != nil) != (tc.failOn != "") || (err != nil && !strings.Contains(err.Error(), tc.failOn)) {
			t.Errorf("failing on %q: Register returned %v", tc.failOn, err)
		}
		if !slices.Equal(r.calls, tc.calls) || !slices.Equal(observed, tc.observed) {
			t.Errorf("failing on %q: calls %q, observed %v; want %q, %v", tc.failOn, r.calls, observed, tc.calls, tc.observed)
		}
	}
	if err := Register(&recordingRegisterer{}, regs, nil); err != nil {
		t.Errorf("Register without an observer: %v", err)
	}
}
