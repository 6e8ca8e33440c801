package iptables

import "fmt"

// Pod annotations that decide whether a pod's traffic is redirected. The
// injector (meshlet's webhook, or consul-k8s') writes them.
const (
	AnnotationInjectStatus = "consul.hashicorp.com/connect-inject-status"
	AnnotationTProxyStatus = "consul.hashicorp.com/transparent-proxy-status"
	TProxyEnabled          = "enabled"
)

// PlanForPod decides from a pod's annotations whether its traffic must be
// redirected, and how. A nil plan means no redirection: the pod is not
// injected, or transparent proxy is off for it (no status "enabled" and no
// redirect config). An injected pod with transparent proxy on whose config
// is missing or invalid is an error: such a pod must not start unprotected.
func PlanForPod(annotations map[string]string) (*Plan, error) {
	if annotations[AnnotationInjectStatus] == "" {
		return nil, nil
	}
	raw, hasConfig := annotations[AnnotationRedirectConfig]
	if annotations[AnnotationTProxyStatus] != TProxyEnabled && !hasConfig {
		return nil, nil
	}
	if !hasConfig {
		return nil, fmt.Errorf("annotation %s is missing on an injected pod with %s=%s",
			AnnotationRedirectConfig, AnnotationTProxyStatus, TProxyEnabled)
	}
	cfg, err := ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("annotation %s: %w", AnnotationRedirectConfig, err)
	}
	p, err := cfg.Validate()
	if err != nil {
		return nil, fmt.Errorf("annotation %s: %w", AnnotationRedirectConfig, err)
	}
	return p, nil
}
