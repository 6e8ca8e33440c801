// Package cni is meshlet-cni, the chained CNI plugin that installs the
// transparent-proxy redirection in an injected pod's network namespace at
// sandbox creation, and fails the sandbox if it cannot.
package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/iptables"
)

// NetConf is meshlet-cni's entry in the node's conflist: the CNI spec's
// keys, meshlet's own (contract.ConflistEntry, which the node agent's
// installer writes) and what the runtime adds.
type NetConf struct {
	types.PluginConf
	contract.ConflistEntry
	// RuntimeConfig carries what the runtime passes for the capabilities
	// the conflist entry declares: with "io.kubernetes.cri.pod-annotations"
	// containerd and CRI-O hand over the pod's annotations (from kubelet's
	// sandbox config), so ADD needs no API call.
	RuntimeConfig struct {
		PodAnnotations map[string]string `json:"io.kubernetes.cri.pod-annotations"`
	} `json:"runtimeConfig"`

	lookupTimeout time.Duration
}

const (
	defaultLookupTimeout = 10 * time.Second
	defaultLockDir       = "/run/meshlet/xtables-locks"
)

// parseConf decodes and checks the plugin's stdin. prevResult is required:
// meshlet-cni only ever runs chained after the plugin that made the network.
func parseConf(stdin []byte, requirePrev bool) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, fmt.Errorf("meshlet-cni: parse network configuration: %w", err)
	}
	if requirePrev && conf.RawPrevResult == nil {
		return nil, errors.New("meshlet-cni must be chained after the plugin that creates the pod network: the configuration has no prevResult")
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, fmt.Errorf("meshlet-cni: parse prevResult: %w", err)
		}
	}
	if strings.TrimSpace(conf.Kubeconfig) == "" {
		return nil, errors.New(`meshlet-cni: "kubeconfig" is empty: it must name the kubeconfig the node agent installs`)
	}
	conf.lookupTimeout = defaultLookupTimeout
	if conf.PodLookupTimeout != "" {
		d, err := time.ParseDuration(conf.PodLookupTimeout)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("meshlet-cni: pod_lookup_timeout %q: expected a positive duration such as 10s", conf.PodLookupTimeout)
		}
		conf.lookupTimeout = d
	}
	switch conf.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return nil, fmt.Errorf("meshlet-cni: log_level %q: expected debug, info, warn or error", conf.LogLevel)
	}
	// The runtime picks the plugin's working directory, so a relative path
	// would land wherever that happens to be.
	if conf.LogFile != "" && !filepath.IsAbs(conf.LogFile) {
		return nil, fmt.Errorf("meshlet-cni: log_file %q: expected an absolute path", conf.LogFile)
	}
	if conf.NodeAgentSocket != "" && !filepath.IsAbs(conf.NodeAgentSocket) {
		return nil, fmt.Errorf("meshlet-cni: agent_socket %q: expected an absolute path", conf.NodeAgentSocket)
	}
	if conf.LockDir == "" {
		conf.LockDir = defaultLockDir
	}
	return conf, nil
}

// k8sArgs are the CNI_ARGS container runtimes pass for Kubernetes pods.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // the runtime's key
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

func parseArgs(s string) (k8sArgs, error) {
	var a k8sArgs
	if err := types.LoadArgs(s, &a); err != nil {
		return a, fmt.Errorf("meshlet-cni: parse CNI_ARGS: %w", err)
	}
	return a, nil
}

// families are the IP families the pod has addresses in (addresses says
// which); rules go into each.
func families(prev types.Result, ifName string) ([]iptables.Family, error) {
	fams, _, err := addresses(prev, ifName)
	return fams, err
}

// addresses reads prevResult once for ADD: the pod's IPs, for the node
// agent's sandbox notice, and the families the rules go into.
//
// The pod's IPs are those of ifName (CNI_IFNAME), the interface this
// network gave the sandbox: an IP whose interface index names another
// interface, one on the host (no sandbox) or a second network's in the
// sandbox (Multus' net1), is not the address the pod is known by. An IP
// naming no interface, or an index outside the result's interfaces,
// cannot be told apart and is taken, as the portmap plugin takes it: IPAM
// plugins name none, and Calico's results hold only those.
//
// The families fail closed: they are those of every IP inside the
// sandbox, on any of its interfaces, since the rules hold for the whole
// netns and a family the pod uses without rules lets its traffic bypass
// the proxy; only the host's side is left out. A result without such IPs
// gets rules in every family it holds, and one without IPs, IPv4 rules.
func addresses(prev types.Result, ifName string) ([]iptables.Family, []string, error) {
	if prev == nil {
		return []iptables.Family{iptables.IPv4}, nil, nil
	}
	res, err := current.NewResultFromResult(prev)
	if err != nil {
		return nil, nil, fmt.Errorf("convert prevResult: %w", err)
	}
	var pod []string
	var v4, v6, anyV4, anyV6 bool
	for _, ip := range res.IPs {
		isV4 := ip.Address.IP.To4() != nil
		anyV4, anyV6 = anyV4 || isV4, anyV6 || !isV4
		var iface *current.Interface
		if i := ip.Interface; i != nil && *i >= 0 && *i < len(res.Interfaces) {
			iface = res.Interfaces[*i]
		}
		if iface != nil && iface.Sandbox == "" {
			continue // the host side of a veth, say
		}
		v4, v6 = v4 || isV4, v6 || !isV4
		if iface == nil || iface.Name == ifName {
			pod = append(pod, ip.Address.IP.String())
		}
	}
	if !v4 && !v6 {
		v4, v6 = anyV4, anyV6
	}
	var fams []iptables.Family
	if v4 || !v6 {
		fams = append(fams, iptables.IPv4)
	}
	if v6 {
		fams = append(fams, iptables.IPv6)
	}
	return fams, pod, nil
}
