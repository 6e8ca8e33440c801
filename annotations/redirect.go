package annotations

import (
	"fmt"

	"github.com/meshlet/meshlet/iptables"
)

// RedirectPlan decides from a pod's annotations whether its traffic must be
// redirected, and how. A nil plan means no redirection: the pod is not
// injected, or transparent proxy is off for it (no status "enabled" and no
// redirect config). An injected pod with transparent proxy on whose config
// is missing or invalid is an error: such a pod must not start unprotected.
func RedirectPlan(ann map[string]string) (*iptables.Plan, error) {
	if ann[InjectStatus] == "" {
		return nil, nil
	}
	raw, hasConfig := ann[RedirectConfig]
	if ann[TProxyStatus] != TProxyEnabled && !hasConfig {
		return nil, nil
	}
	if !hasConfig {
		return nil, fmt.Errorf("annotation %s is missing on an injected pod with %s=%s", RedirectConfig, TProxyStatus, TProxyEnabled)
	}
	cfg, err := iptables.ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("annotation %s: %w", RedirectConfig, err)
	}
	p, err := cfg.Validate()
	if err != nil {
		return nil, fmt.Errorf("annotation %s: %w", RedirectConfig, err)
	}
	return p, nil
}
