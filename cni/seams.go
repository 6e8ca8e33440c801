package cni

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/meshlet/meshlet/iptables"
)

// ADD, CHECK and DEL reach the world through two interfaces: the pod
// lookup and the rule applier. Add, Check and Del build the host's; the
// tests pass fakes, so every decision is tested without root, a netns or
// an API server (as Istio tests its plugin's doAddRun).

// podLookup finds a pod's annotations, and tells the node agent when a
// pod's sandbox is redirected.
type podLookup interface {
	// annotations returns the pod's annotations and where they came from,
	// for the logs: "runtime", "agent" (the node agent) or "api".
	annotations(namespace, name string) (ann map[string]string, from string, err error)
	// sandboxUp tells the node agent the redirected sandbox's IPs, so it
	// can register the pod before kubelet reports them
	// (nodeagent.KindSandbox). Best effort: the node agent learns the IP
	// from kubelet anyway.
	sandboxUp(namespace, name, uid string, ips []string) error
}

// ruleApplier is what the commands use of iptables.Applier.
type ruleApplier interface {
	Apply(netns string, p *iptables.Plan, families []iptables.Family) error
	Verify(netns string, p *iptables.Plan, families []iptables.Family) error
	Remove(netns string, families []iptables.Family) (skipped []iptables.Family, err error)
	// Backend is the iptables backend the rules went through, for the logs.
	Backend() iptables.Mode
}

// hostLookup asks, in order: the runtime's copy of the annotations (no
// call at all), the node agent's pod cache on its unix socket (one local
// exchange), the API server (a TLS handshake and a GET, in every
// process). The node agent is only a shortcut: when it fails or does not
// know the pod, the API server decides.
type hostLookup struct {
	conf *NetConf
	uid  string // K8S_POD_UID, for the node agent to tell a pod from an old one of the same name
	log  *slog.Logger
}

func (c *call) hostLookup() hostLookup { return hostLookup{conf: c.conf, uid: c.uid, log: c.log} }

func (l hostLookup) annotations(namespace, name string) (map[string]string, string, error) {
	if ann := l.conf.RuntimeConfig.PodAnnotations; ann != nil {
		return ann, "runtime", nil
	}
	if l.conf.NodeAgentSocket != "" {
		ann, err := askNodeAgent(l.conf.NodeAgentSocket, namespace, name, l.uid)
		if err == nil {
			return ann, "agent", nil
		}
		// Unknown to the node agent is ordinary (a pod its informer has
		// not seen yet); a node agent that does not answer slows every
		// ADD.
		level := slog.LevelWarn
		if errors.Is(err, errUnknownToNodeAgent) {
			level = slog.LevelInfo
		}
		l.log.Log(context.Background(), level, "pod cache of the node agent did not answer; asking the API server",
			"agent_socket", l.conf.NodeAgentSocket, "err", err)
	}
	api, err := loadKubeconfig(l.conf.Kubeconfig)
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.conf.lookupTimeout)
	defer cancel()
	ann, err := api.podAnnotations(ctx, namespace, name)
	if err != nil {
		return nil, "", fmt.Errorf("read annotations from the API server: %w", err)
	}
	return ann, "api", nil
}

func (l hostLookup) sandboxUp(namespace, name, uid string, ips []string) error {
	if l.conf.NodeAgentSocket == "" {
		return nil
	}
	return tellNodeAgent(l.conf.NodeAgentSocket, namespace, name, uid, ips)
}

// hostApplier is iptables.Applier with the backend resolved on first use:
// detecting it may exec iptables, which an ADD for a pod that needs no
// rules must not pay for.
type hostApplier struct {
	mode, lockDir string // as configured
	resolved      *iptables.Applier
}

func newHostApplier(conf *NetConf) *hostApplier {
	return &hostApplier{mode: conf.IptablesMode, lockDir: conf.LockDir}
}

func (h *hostApplier) applier() (iptables.Applier, error) {
	if h.resolved == nil {
		mode, err := iptables.ParseMode(h.mode)
		if err != nil {
			return iptables.Applier{}, err
		}
		h.resolved = &iptables.Applier{Mode: mode, LockDir: h.lockDir}
	}
	return *h.resolved, nil
}

func (h *hostApplier) Apply(netns string, p *iptables.Plan, fams []iptables.Family) error {
	a, err := h.applier()
	if err != nil {
		return err
	}
	return a.Apply(netns, p, fams)
}

func (h *hostApplier) Verify(netns string, p *iptables.Plan, fams []iptables.Family) error {
	a, err := h.applier()
	if err != nil {
		return err
	}
	return a.Verify(netns, p, fams)
}

func (h *hostApplier) Remove(netns string, fams []iptables.Family) ([]iptables.Family, error) {
	a, err := h.applier()
	if err != nil {
		return nil, err
	}
	return a.Remove(netns, fams)
}

func (h *hostApplier) Backend() iptables.Mode {
	if h.resolved == nil {
		return ""
	}
	return h.resolved.Mode
}
