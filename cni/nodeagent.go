package cni

import (
	"errors"
	"fmt"
	"time"

	"github.com/meshlet/meshlet/cni/nodeagent"
)

// nodeAgentTimeout bounds dialing the node agent's pod cache and its
// answer. It leaves room for the node agent's wait for a pod its informer
// has not delivered yet (podcache.DefaultWait); past it, the API server is
// the faster way.
const nodeAgentTimeout = 250 * time.Millisecond

// errUnknownToNodeAgent: the node agent answered, but does not know the
// pod.
var errUnknownToNodeAgent = errors.New("pod unknown to the node agent")

// askNodeAgent asks the node agent's pod cache on socket for the pod's
// annotations. The protocol (cni/nodeagent) needs only what the plugin
// links already: no client-go, no second TLS client.
func askNodeAgent(socket, namespace, name, uid string) (map[string]string, error) {
	resp, err := nodeagent.Ask(socket, nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: namespace, Name: name, UID: uid}, nodeAgentTimeout)
	if err != nil {
		return nil, fmt.Errorf("ask the node agent: %w", err)
	}
	if !resp.Found {
		return nil, fmt.Errorf("%w: %s", errUnknownToNodeAgent, resp.Reason)
	}
	return resp.Annotations, nil
}

// noticeTimeout bounds the sandbox notice, which the node agent takes
// without waiting for anything: it is a shortcut, and must not slow an
// ADD whose node agent is stuck.
const noticeTimeout = 100 * time.Millisecond

// tellNodeAgent sends the node agent the notice that the pod's sandbox is
// redirected and has ips.
func tellNodeAgent(socket, namespace, name, uid string, ips []string) error {
	resp, err := nodeagent.Ask(socket, nodeagent.Request{Kind: nodeagent.KindSandbox, Namespace: namespace, Name: name, UID: uid, SandboxIPs: ips}, noticeTimeout)
	if err != nil {
		return fmt.Errorf("tell the node agent: %w", err)
	}
	if !resp.Found {
		return fmt.Errorf("tell the node agent: %s", resp.Reason)
	}
	return nil
}
