package podcache

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshlet/meshlet/cni/nodeagent"
)

// Answers, as counted by Metrics.
const (
	resultHit         = "hit"
	resultMiss        = "miss"         // not in the cache, even after the wait
	resultUIDMismatch = "uid_mismatch" // the cache holds another pod of that name
	resultTerminating = "terminating"  // no UID to tell it from its successor
	resultBadRequest  = "bad_request"
	resultNotice      = "sandbox_notice" // meshlet-cni's notice that a sandbox is up, taken
)

// handle answers one connection.
func (s *Server) handle(ctx context.Context, conn *net.UnixConn) {
	defer conn.Close()
	start := time.Now()
	// The client writes its request at once; the wait for a late pod is
	// bounded by s.Wait; the answer is one short write.
	_ = conn.SetReadDeadline(start.Add(ioTimeout))
	resp, result := s.answer(ctx, conn)
	s.Metrics.answered(result, time.Since(start))
	_ = conn.SetWriteDeadline(time.Now().Add(ioTimeout))
	if err := nodeagent.Write(conn, resp); err != nil {
		s.Log.Warn("pod cache: write answer", "err", err, "result", result)
	}
}

func (s *Server) answer(ctx context.Context, conn *net.UnixConn) (nodeagent.Response, string) {
	resp := nodeagent.Response{Version: nodeagent.Version}
	req, bad := readRequest(conn)
	if bad == "" && req.Kind == nodeagent.KindSandbox {
		if bad = s.notice(req); bad == "" {
			resp.Found = true
			return resp, resultNotice
		}
	}
	if bad != "" {
		resp.Reason = bad
		s.Log.Warn("pod cache: "+bad, "namespace", req.Namespace, "name", req.Name, "kind", req.Kind)
		return resp, resultBadRequest
	}
	pod, result, why := s.find(ctx, req)
	if pod == nil {
		resp.Reason = why
		s.Log.Debug("pod cache: pod unknown", "namespace", req.Namespace, "name", req.Name, "uid", req.UID, "reason", why)
		return resp, result
	}
	// Annotations is read only: encoding it does not touch the
	// informer's object.
	resp.Found, resp.Annotations = true, pod.Annotations
	return resp, resultHit
}

// readRequest reads the request on conn; the string says what is wrong
// with it, "" if nothing. A request without a kind, from a meshlet-cni
// that predates the field, gets the kind it meant: during a rollout the
// node agent and the plugin it installs may be of different versions.
func readRequest(conn io.Reader) (nodeagent.Request, string) {
	var req nodeagent.Request
	if err := nodeagent.Read(conn, nodeagent.MaxRequest, &req); err != nil {
		return req, fmt.Sprintf("bad request: %v", err)
	}
	if req.Version != nodeagent.Version {
		return req, fmt.Sprintf("bad request: protocol version %d, this node agent speaks %d", req.Version, nodeagent.Version)
	}
	if req.Namespace == "" || req.Name == "" {
		return req, "bad request: namespace and name are required"
	}
	req = req.WithInferredKind()
	if err := req.CheckKind(); err != nil {
		return req, fmt.Sprintf("bad request: %v", err)
	}
	return req, ""
}

// notice hands a sandbox notice to s.Sandboxes; it returns what was wrong
// with it, "" when taken.
func (s *Server) notice(req nodeagent.Request) string {
	if req.UID == "" {
		return "bad request: a sandbox notice needs the pod's uid"
	}
	if len(req.SandboxIPs) > maxSandboxIPs {
		return fmt.Sprintf("bad request: %d sandbox IPs, expected at most %d", len(req.SandboxIPs), maxSandboxIPs)
	}
	ips := make([]netip.Addr, len(req.SandboxIPs))
	for i, raw := range req.SandboxIPs {
		ip, err := netip.ParseAddr(raw)
		if err != nil {
			return fmt.Sprintf("bad request: sandbox IP %q: %v", raw, err)
		}
		ips[i] = ip
	}
	if s.Sandboxes == nil {
		return "bad request: this node agent takes no sandbox notices"
	}
	s.Sandboxes.SandboxUp(req.Namespace, req.Name, req.UID, ips)
	return ""
}

// maxSandboxIPs bounds a notice: a pod has one IP per family.
const maxSandboxIPs = 2

// find looks the pod up, waiting up to s.Wait for the right one to reach
// the cache: kubelet may start the sandbox before the node agent's
// informer has the pod. Without Notify the lookup is polled.
func (s *Server) find(ctx context.Context, req nodeagent.Request) (*corev1.Pod, string, string) {
	key := req.Namespace + "/" + req.Name
	expired := time.After(s.Wait)
	for {
		// Watch before looking, so that a Notify in between is not lost.
		ch := s.watch(key)
		pod, result, why := s.check(req)
		if pod != nil || s.Wait <= 0 {
			s.unwatch(key, ch)
			return pod, result, why
		}
		done := false
		select {
		case <-ch:
		case <-time.After(s.poll):
		case <-expired:
			done = true
		case <-ctx.Done():
			done = true
		}
		s.unwatch(key, ch)
		if done {
			return pod, result, why
		}
	}
}

// check is one lookup: the pod, or nil and why not.
func (s *Server) check(req nodeagent.Request) (*corev1.Pod, string, string) {
	pod, ok := s.lookup.Pod(req.Namespace, req.Name)
	switch {
	case !ok || pod == nil:
		return nil, resultMiss, "not in the node agent's pod cache"
	case req.UID != "" && string(pod.UID) != req.UID:
		// An old pod of the same name, not yet replaced in the cache:
		// its annotations are not the new pod's.
		return nil, resultUIDMismatch, fmt.Sprintf("the node agent's pod cache holds another pod of that name (uid %s, asked for %s)", pod.UID, req.UID)
	case req.UID == "" && pod.DeletionTimestamp != nil:
		// Its successor of the same name may be the pod being started;
		// without a UID only the API server can tell.
		return nil, resultTerminating, "the cached pod of that name is terminating and the request has no uid"
	}
	return pod, resultHit, ""
}

func (s *Server) watch(key string) chan struct{} {
	ch := make(chan struct{})
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waiters[key] == nil {
		s.waiters[key] = map[chan struct{}]struct{}{}
	}
	s.waiters[key][ch] = struct{}{}
	return ch
}

func (s *Server) unwatch(key string, ch chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.waiters[key], ch)
	if len(s.waiters[key]) == 0 {
		delete(s.waiters, key)
	}
}

// Notify wakes the requests waiting for pod namespace/name. The node
// agent calls it when its informer adds or updates a pod (EventHandler
// does), after the informer's cache holds the change, so a waiting
// request is answered as soon as the pod arrives rather than at the next
// poll.
func (s *Server) Notify(namespace, name string) {
	key := namespace + "/" + name
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.waiters[key] {
		close(ch)
	}
	delete(s.waiters, key)
}

// EventHandler calls Notify on every pod the informer adds or updates:
// podInformer.AddEventHandler(srv.EventHandler()). client-go runs
// handlers after the informer's cache is updated.
func (s *Server) EventHandler() cache.ResourceEventHandler {
	notify := func(obj any) {
		if pod, ok := obj.(*corev1.Pod); ok {
			s.Notify(pod.Namespace, pod.Name)
		}
	}
	return cache.ResourceEventHandlerFuncs{AddFunc: notify, UpdateFunc: func(_, obj any) { notify(obj) }}
}

// ListerLookup is a Lookup on a client-go pod lister, such as the node
// agent's informer's.
type ListerLookup struct{ Lister corelisters.PodLister }

// Pod is the lister's pod; its only error, NotFound, is a miss.
func (l ListerLookup) Pod(namespace, name string) (*corev1.Pod, bool) {
	pod, err := l.Lister.Pods(namespace).Get(name)
	if err != nil {
		return nil, false
	}
	return pod, true
}
