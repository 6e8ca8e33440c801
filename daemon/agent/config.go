package agent

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/meshlet/meshlet/daemon/repair"
	"github.com/meshlet/meshlet/iptables"
)

// Config is the node agent's configuration; Main fills it from flags.
type Config struct {
	// NodeName is the node the node agent serves ($NODE_NAME, from the downward
	// API): it watches only that node's pods.
	NodeName string
	// PodName is the node agent's own pod ($POD_NAME), to tell an uninstall
	// from a rolling update.
	PodName string
	// Workers sync pods concurrently (one pod at a time each).
	Workers int
	// ResyncInterval: how often the Consul agent's registrations are
	// compared with the pods.
	ResyncInterval time.Duration
	// ConsulNamespaces: Consul Enterprise namespaces are on; the resync
	// lists every namespace, and a pod's namespace is created when
	// missing.
	ConsulNamespaces bool
	// CrossNamespacePolicy is the ACL policy made a default of each
	// namespace the node agent creates ("": none).
	CrossNamespacePolicy string
	// Listen serves /healthz, /readyz, /metrics and the sidecars' problem
	// reports; empty: not served.
	Listen string
	CNI    CNIConfig
	// Socket serves meshlet-cni the pods' annotations from the node agent's
	// cache (daemon/podcache); empty: not served. The same path on the
	// host and in the node agent's container.
	Socket string
	// IptablesMode is the host's iptables backend (auto: detected in
	// HostRoot), for the plugin's entry and the repair.
	IptablesMode string
	HostRoot     string
	Repair       RepairConfig

	// detectIptablesMode, when set, replaces the host's detection for
	// auto: a unit test makes it fail, then succeed.
	detectIptablesMode func() (iptables.Mode, error)
}

// RepairConfig is the check of running pods for missing redirection.
type RepairConfig struct {
	// Mode: auto, repair, delete or off (daemon/repair).
	Mode string
	// Interval between passes; a pass also follows the install and every
	// re-chaining of the entry.
	Interval time.Duration
	// ProcRoot is the host's /proc (the node agent runs with hostPID).
	ProcRoot string
	// Disabled turns the check off entirely (no hostPID needed).
	Disabled bool
}

// CNIConfig is the plugin's installation on the node.
type CNIConfig struct {
	// Enabled: install meshlet-cni and keep it chained.
	Enabled bool
	// BinDir and ConfDir are the runtime's CNI dirs on the host, as
	// mounted into the node agent's container.
	BinDir, ConfDir string
	// Binary is meshlet-cni in the node agent's image.
	Binary string
	// KubeconfigPath is where the plugin's kubeconfig goes on the host
	// (outside ConfDir).
	KubeconfigPath string
	// LogFile and LogLevel go into the plugin's entry.
	LogFile, LogLevel string
	// Namespace and ServiceAccount: the plugin's credentials are tokens
	// of this ServiceAccount, which may only get pods.
	Namespace, ServiceAccount string
	// TokenTTL is the requested life of those tokens.
	TokenTTL time.Duration
	// APIServer is the API server's URL as the plugin, on the host,
	// reaches it; CAData its CA bundle (PEM).
	APIServer string
	CAData    []byte
	// UninstallOnDelete removes the plugin when the node agent's DaemonSet is
	// deleted.
	UninstallOnDelete bool
}

func (c Config) validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("-node-name is empty: set it or $NODE_NAME (the downward API's spec.nodeName)"))
	}
	if c.Workers < 1 {
		errs = append(errs, fmt.Errorf("-workers %d: expected at least 1", c.Workers))
	}
	if c.ResyncInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("-resync-interval %s: expected at least 100ms", c.ResyncInterval))
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			errs = append(errs, fmt.Errorf("-listen %q: expected host:port", c.Listen))
		}
	}
	if c.CrossNamespacePolicy != "" && !c.ConsulNamespaces {
		errs = append(errs, fmt.Errorf("-consul-cross-namespace-acl-policy %s without -enable-namespaces: no namespace is created", c.CrossNamespacePolicy))
	}
	if c.CNI.Enabled {
		errs = append(errs, c.CNI.validate()...)
	}
	if c.Socket != "" && !filepath.IsAbs(c.Socket) {
		errs = append(errs, fmt.Errorf("-cni-agent-socket %q: expected an absolute path", c.Socket))
	}
	if !c.Repair.Disabled {
		if _, err := repair.ParseMode(c.Repair.Mode); err != nil {
			errs = append(errs, fmt.Errorf("-repair-mode: %w", err))
		}
		if c.Repair.Interval < time.Second {
			errs = append(errs, fmt.Errorf("-repair-interval %s: expected at least 1s", c.Repair.Interval))
		}
	}
	switch c.IptablesMode {
	case "auto", "nft", "legacy":
	default:
		errs = append(errs, fmt.Errorf("-iptables-mode %q: expected auto, nft or legacy", c.IptablesMode))
	}
	return errors.Join(errs...)
}

func (c CNIConfig) validate() []error {
	var errs []error
	for _, f := range []struct{ flag, path string }{
		{"cni-bin-dir", c.BinDir}, {"cni-conf-dir", c.ConfDir}, {"cni-binary", c.Binary}, {"cni-kubeconfig", c.KubeconfigPath},
	} {
		if !filepath.IsAbs(f.path) {
			errs = append(errs, fmt.Errorf("-%s %q: expected an absolute path", f.flag, f.path))
		}
	}
	if c.Namespace == "" || c.ServiceAccount == "" {
		errs = append(errs, errors.New("-cni-service-account and its namespace (-namespace or $POD_NAMESPACE) are needed for meshlet-cni's credentials"))
	}
	if c.TokenTTL < 10*time.Minute {
		errs = append(errs, fmt.Errorf("-cni-token-ttl %s: expected at least 10m (the API server's minimum)", c.TokenTTL))
	}
	if c.APIServer == "" {
		errs = append(errs, errors.New("-cni-api-server is empty and the agent is not in a cluster: give the API server's URL as the host reaches it"))
	}
	return errs
}

func (c Config) consulListNamespace() string {
	if c.ConsulNamespaces {
		return "*"
	}
	return ""
}
