package iptables

import (
	"fmt"

	"github.com/meshlet/meshlet/contract"
)

// RedirectPlan decides from a pod's annotations whether its traffic must be
// redirected, and how. A nil plan means no redirection: the pod is not
// injected, or transparent proxy is off for it (no status "enabled" and no
// redirect config), or consul-k8s injected it without its CNI plugin
// (transparent proxy on, no config and no meshlet registration: its init
// container redirects). A pod meshlet injected with transparent proxy on
// whose config is missing, or any injected pod whose config is invalid, is
// an error: such a pod must not start unprotected.
func RedirectPlan(ann map[string]string) (*Plan, error) {
	if ann[contract.InjectStatus] == "" {
		return nil, nil
	}
	raw, hasConfig := ann[contract.RedirectConfig]
	if ann[contract.TProxyStatus] != contract.TProxyEnabled && !hasConfig {
		return nil, nil
	}
	if !hasConfig {
		if contract.InjectedByOther(ann) {
			// consul-k8s injected it without its CNI plugin (meshlet's
			// webhook writes the registration and the config together):
			// its own init container redirects, at every start of the pod.
			return nil, nil
		}
		return nil, fmt.Errorf("annotation %s is missing on an injected pod with %s=%s", contract.RedirectConfig, contract.TProxyStatus, contract.TProxyEnabled)
	}
	cfg, err := ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("annotation %s: %w", contract.RedirectConfig, err)
	}
	p, err := cfg.Validate()
	if err != nil {
		return nil, fmt.Errorf("annotation %s: %w", contract.RedirectConfig, err)
	}
	return p, nil
}
