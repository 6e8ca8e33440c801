package register

import (
	"errors"
	"fmt"
	"net/http"
	"sync"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/contract"
)

// NamespaceAPI is the part of Consul Enterprise's namespace API
// (*capi.Namespaces) that Namespaces uses.
type NamespaceAPI interface {
	Read(name string, q *capi.QueryOptions) (*capi.Namespace, *capi.QueryMeta, error)
	Create(ns *capi.Namespace, q *capi.WriteOptions) (*capi.Namespace, *capi.WriteMeta, error)
}

// Namespaces creates the Consul Enterprise namespaces pods are registered
// in when they do not exist yet: a destination namespace nobody made, or
// the mirror of a new Kubernetes namespace. consul-k8s users expect it,
// since its injector does the same. Creating one takes operator:write
// (deploy/consul/node-agent-policy-namespaces.hcl).
type Namespaces struct {
	API NamespaceAPI
	// CrossNamespacePolicy, when set, is made a policy default of each
	// namespace created: with ACLs, what lets the tokens of a namespace's
	// pods read the services of the others, their upstreams there (the
	// official Consul chart's "cross-namespace-policy").
	CrossNamespacePolicy string

	mu    sync.Mutex
	known map[string]bool // seen to exist
}

// Ensure makes namespace ns exist, creating it when it does not; it says
// whether it did. "" (no namespaces) and "default", which always exists,
// ask Consul nothing, and neither does a namespace seen before.
func (n *Namespaces) Ensure(ns string) (created bool, err error) {
	if ns == "" || ns == "default" {
		return false, nil
	}
	n.mu.Lock()
	known := n.known[ns]
	n.mu.Unlock()
	if known {
		return false, nil
	}
	have, _, err := n.API.Read(ns, nil)
	if err != nil {
		return false, fmt.Errorf("read Consul namespace %s: %w", ns, err)
	}
	if have == nil || have.DeletedAt != nil {
		want := &capi.Namespace{Name: ns, Description: "Created by meshlet's node agent for the pods it registers",
			Meta: map[string]string{contract.MetaManagedBy: contract.ManagedBy}}
		if n.CrossNamespacePolicy != "" {
			want.ACLs = &capi.NamespaceACLConfig{PolicyDefaults: []capi.ACLLink{{Name: n.CrossNamespacePolicy}}}
		}
		if _, _, err := n.API.Create(want, nil); err != nil {
			var se capi.StatusError
			if errors.As(err, &se) && se.Code == http.StatusNotFound {
				// Consul without Enterprise has no namespace endpoint.
				return false, fmt.Errorf("create Consul namespace %s: the Consul agent has no namespaces (is it Consul Enterprise? without it, turn global.enableConsulNamespaces off): %w", ns, err)
			}
			// Another node's agent may have created it meanwhile.
			if again, _, rerr := n.API.Read(ns, nil); rerr != nil || again == nil || again.DeletedAt != nil {
				return false, fmt.Errorf("create Consul namespace %s (the node agent's token needs operator:write, and acl:write for a default policy; or create the namespace beforehand): %w", ns, err)
			}
		} else {
			created = true
		}
	}
	n.mu.Lock()
	if n.known == nil {
		n.known = map[string]bool{}
	}
	n.known[ns] = true
	n.mu.Unlock()
	return created, nil
}

// Forget makes the next Ensure of ns ask Consul again: a registration
// there failed, and the namespace may have been deleted since.
func (n *Namespaces) Forget(ns string) {
	n.mu.Lock()
	delete(n.known, ns)
	n.mu.Unlock()
}
