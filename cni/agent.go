package cni

import (
	"errors"
	"fmt"
	"time"

	"github.com/meshlet/meshlet/cni/nodeagent"
)

// agentTimeout bounds dialing the agent's pod cache and its answer. A hit
// takes well under a millisecond; the agent waits up to 200 ms for a pod
// its informer has not delivered yet (podcache.DefaultWait). Past this,
// the API server (~10 ms) is the faster way.
const agentTimeout = 250 * time.Millisecond

// errAgentUnknown: the agent answered, but does not know the pod.
var errAgentUnknown = errors.New("pod unknown to the agent")

// askAgent asks the node agent's pod cache on socket for the pod's
// annotations. The protocol (cni/nodeagent) needs only what the
// plugin links already: no client-go, no second TLS client.
func askAgent(socket, namespace, name, uid string) (map[string]string, error) {
	resp, err := nodeagent.Ask(socket, nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: namespace, Name: name, UID: uid}, agentTimeout)
	if err != nil {
		return nil, fmt.Errorf("ask the agent: %w", err)
	}
	if !resp.Found {
		return nil, fmt.Errorf("%w: %s", errAgentUnknown, resp.Reason)
	}
	return resp.Annotations, nil
}

// noticeTimeout bounds the sandbox notice, which the agent takes without
// waiting for anything: it is a shortcut, and must not slow an ADD whose
// agent is stuck.
const noticeTimeout = 100 * time.Millisecond

// tellAgent sends the node agent the notice that the pod's sandbox is
// redirected and has ips.
func tellAgent(socket, namespace, name, uid string, ips []string) error {
	resp, err := nodeagent.Ask(socket, nodeagent.Request{Kind: nodeagent.KindSandbox, Namespace: namespace, Name: name, UID: uid, SandboxIPs: ips}, noticeTimeout)
	if err != nil {
		return fmt.Errorf("tell the agent: %w", err)
	}
	if !resp.Found {
		return fmt.Errorf("tell the agent: %s", resp.Reason)
	}
	return nil
}
