package register

import (
	"fmt"

	capi "github.com/hashicorp/consul/api"
)

// ServiceRegisterer is the part of the Consul agent's API (*capi.Agent)
// that Register uses.
type ServiceRegisterer interface {
	ServiceRegisterOpts(reg *capi.AgentServiceRegistration, opts capi.ServiceRegisterOpts) error
}

// Register writes one pod's registrations to the node's Consul agent as
// the node agent does: the service, then its proxy (the proxy's alias
// check refers to the service), each replacing the checks it had; it
// stops at the first failure. observe, if not nil, is given each
// request's outcome. The proxy's tests (dataplane/) register through it
// too, so the proxy is tested against what the node agent writes.
func Register(c ServiceRegisterer, regs Registrations, observe func(error)) error {
	for _, r := range []*capi.AgentServiceRegistration{regs.Service, regs.Proxy} {
		err := c.ServiceRegisterOpts(r, capi.ServiceRegisterOpts{ReplaceExistingChecks: true})
		if observe != nil {
			observe(err)
		}
		if err != nil {
			return fmt.Errorf("register %s with the Consul agent: %w", r.ID, err)
		}
	}
	return nil
}
