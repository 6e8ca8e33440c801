package register

import (
	"strings"
	"testing"

	"github.com/meshlet/meshlet/test/consultest"
)

// TestNamespacesOnConsulWithoutThem: against a real Consul without
// Enterprise, "" and "default" need nothing, and any other namespace is
// refused saying Consul has none, not that a right is missing. (Creation
// on Consul Enterprise: daemon/agent's TestSyncerConsulNamespaces, at the
// request level.)
func TestNamespacesOnConsulWithoutThem(t *testing.T) {
	_, cl := consultest.DevAgent(t)
	n := &Namespaces{API: cl.Namespaces(), CrossNamespacePolicy: "cross-namespace-policy"}
	for _, ns := range []string{"", "default"} {
		if created, err := n.Ensure(ns); err != nil || created {
			t.Errorf("Ensure(%q): created %v, %v; want nothing to do", ns, created, err)
		}
	}
	created, err := n.Ensure("k8s-shop")
	if created || err == nil || !strings.Contains(err.Error(), "the Consul agent has no namespaces (is it Consul Enterprise?") ||
		strings.Contains(err.Error(), "operator:write") {
		t.Errorf("Ensure(k8s-shop) on Consul without Enterprise: created %v, %v", created, err)
	}
}
