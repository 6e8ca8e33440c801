package iptables

import (
	"fmt"

	"github.com/meshlet/meshlet/contract"
)

// RedirectPlan decides from a pod's annotations whether its traffic must be
// redirected, and how. A nil plan means no redirection: the pod is not
// injected, or transparent proxy is off for it (no status "enabled" and no
// redirect config). An injected pod with transparent proxy on whose config
// is missing or invalid is an error: such a pod must not start unprotected.
func RedirectPlan(ann map[string]string) (*Plan, error) {
	if ann[contract.InjectStatus] == "" {
		return nil, nil
	}
	raw, hasConfig := ann[contract.RedirectConfig]
	if ann[contract.TProxyStatus] != contract.TProxyEnabled && !hasConfig {
		return nil, nil
	}
	if !hasConfig {
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
