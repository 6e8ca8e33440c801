package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/http"
	"sync"
	"time"

	capi "github.com/hashicorp/consul/api"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/daemon/register"
)

// consulAgent is what the syncer uses of the node's Consul client agent
// (*capi.Agent).
type consulAgent interface {
	register.ServiceRegisterer
	ServiceDeregisterOpts(id string, q *capi.QueryOptions) error
	UpdateTTLOpts(checkID, output, status string, q *capi.QueryOptions) error
	ServicesWithFilterOpts(filter string, q *capi.QueryOptions) (map[string]*capi.AgentService, error)
}

// managedFilter selects the registrations the node agent owns on its
// Consul agent.
var managedFilter = fmt.Sprintf("Meta[%q] == %q", contract.MetaManagedBy, contract.ManagedBy)

// held is what the node agent registered for one pod.
type held struct {
	uid            types.UID
	svcID, proxyID string
	namespace      string    // Consul namespace ("" without Enterprise)
	hash           uint64    // of the registrations, check status aside
	status         string    // the check's status as last set
	problem        string    // the last problem reported in an Event
	registeredAt   time.Time // also the last TTL update
}

// Syncer keeps the node's Consul client agent holding exactly the
// registrations of the injected pods on the node. Reconcile is called per
// pod key (namespace/name) from a work queue, one call per key at a time;
// Resync compares what the Consul agent holds with the pods.
type Syncer struct {
	Consul   consulAgent
	Pods     corelisters.PodLister     // this node's pods
	Services corelisters.ServiceLister // every namespace's Services
	Events   record.EventRecorder
	Metrics  *Metrics
	Log      *slog.Logger
	// ListNamespace is the Consul namespace Resync lists ("*" with
	// Enterprise namespaces, "" without).
	ListNamespace string
	// Namespaces, with Enterprise namespaces (nil without), creates the
	// namespace a pod goes to before its registration, when missing.
	Namespaces *register.Namespaces
	// Requeue puts a pod key back on the work queue.
	Requeue func(key string)

	mu        sync.Mutex
	held      map[string]*held
	sandboxes map[string]sandboxHint // by pod key (SandboxUp)
}

// Reconcile brings the Consul agent in line with the pod key names: a pod
// that is gone, finished or not injected is deregistered; an injected pod
// with an IP is registered, and its check set from its Ready condition.
func (s *Syncer) Reconcile(key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return fmt.Errorf("pod key %q: %w", key, err)
	}
	pod, err := s.Pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return s.deregister(key, "pod deleted")
	}
	if err != nil {
		return fmt.Errorf("pod %s: %w", key, err)
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return s.deregister(key, "pod "+string(pod.Status.Phase))
	}
	services, err := s.Services.Services(ns).List(labels.Everything())
	if err != nil {
		return fmt.Errorf("pod %s: list Services: %w", key, err)
	}
	pod, addressFrom := s.withSandboxIP(pod)
	regs, err := register.For(pod, services)
	switch {
	case errors.Is(err, register.ErrNotInjected):
		return s.deregister(key, "pod not injected")
	case errors.Is(err, register.ErrNoIP):
		return nil // the update that gives it one requeues it
	case err != nil:
		// What is registered stays: an added Service must not take a
		// serving pod out of the mesh; the Event says what to fix.
		s.problem(pod, err)
		return nil
	}
	status, output := health(pod)
	regs.Service.Check.Status = status
	h, err := hashOf(regs)
	if err != nil {
		return fmt.Errorf("pod %s: %w", key, err)
	}

	s.mu.Lock()
	cur := s.held[key]
	s.mu.Unlock()
	q := &capi.QueryOptions{Namespace: regs.Service.Namespace}
	switch {
	case cur == nil || cur.hash != h || cur.uid != pod.UID:
		if cur != nil && cur.uid != pod.UID {
			// A new pod of the same name (a StatefulSet's): the IDs are the
			// same, the registration is replaced below.
			s.Log.Info("pod replaced", "pod", key, "uid", pod.UID)
		}
		if err := s.register(regs); err != nil {
			var nsErr namespaceError
			if errors.As(err, &nsErr) {
				// Retried, and said on the pod (the recorder folds repeats
				// into one Event with a count): a missing namespace is
				// someone's to fix.
				s.Events.Event(pod, corev1.EventTypeWarning, "MeshletNamespaceFailed", "not registered with Consul: "+err.Error())
			}
			return fmt.Errorf("pod %s: %w", key, err)
		}
		s.Log.Info("registered", "pod", key, "service", regs.Service.Name, "id", regs.Service.ID, "address", regs.Service.Address, "address_from", addressFrom, "check", status)
		if regs.Note != "" && (cur == nil || cur.uid != pod.UID) {
			s.Events.Event(pod, corev1.EventTypeNormal, "MeshletServiceNamedAfterContainer", regs.Note)
		}
	case cur.status != status:
		if err := s.Consul.UpdateTTLOpts(regs.Service.Check.CheckID, output, status, q); err != nil {
			s.Metrics.consulOp("update_ttl", err)
			if isNotFound(err) {
				s.forget(key) // the Consul agent lost it: register again
			}
			return fmt.Errorf("pod %s: set check %s %s: %w", key, regs.Service.Check.CheckID, status, err)
		}
		s.Metrics.consulOp("update_ttl", nil)
		s.Log.Info("health", "pod", key, "check", status)
	default:
		return nil
	}
	s.mu.Lock()
	if s.held == nil {
		s.held = map[string]*held{}
	}
	s.held[key] = &held{uid: pod.UID, svcID: regs.Service.ID, proxyID: regs.Proxy.ID,
		namespace: regs.Service.Namespace, hash: h, status: status, registeredAt: time.Now()}
	s.countLocked()
	s.mu.Unlock()
	return nil
}

// register is register.Register, each request counted, after the
// namespace it goes to is made to exist (Namespaces).
func (s *Syncer) register(regs register.Registrations) error {
	ns := regs.Service.Namespace
	if s.Namespaces != nil {
		created, err := s.Namespaces.Ensure(ns)
		if err != nil {
			return namespaceError{err}
		}
		if created {
			s.Log.Info("created Consul namespace", "consul_namespace", ns, "policy_default", s.Namespaces.CrossNamespacePolicy)
		}
	}
	err := register.Register(s.Consul, regs, func(err error) { s.Metrics.consulOp("register", err) })
	if err != nil && s.Namespaces != nil {
		s.Namespaces.Forget(ns) // it may have been deleted: the retry looks again
	}
	return err
}

// namespaceError is a failure to make a pod's Consul namespace exist.
type namespaceError struct{ err error }

func (e namespaceError) Error() string { return e.err.Error() }
func (e namespaceError) Unwrap() error { return e.err }

// deregister removes what the node agent registered for key, proxy
// first.
func (s *Syncer) deregister(key, why string) error {
	s.mu.Lock()
	cur := s.held[key]
	s.mu.Unlock()
	if cur == nil {
		return nil
	}
	if cur.hash == 0 {
		s.forget(key) // only a problem was recorded
		return nil
	}
	q := &capi.QueryOptions{Namespace: cur.namespace}
	for _, id := range []string{cur.proxyID, cur.svcID} {
		if err := s.deregisterID(id, q); err != nil {
			return fmt.Errorf("pod %s: %w", key, err)
		}
	}
	s.forget(key)
	s.Log.Info("deregistered", "pod", key, "id", cur.svcID, "why", why)
	return nil
}

func (s *Syncer) deregisterID(id string, q *capi.QueryOptions) error {
	err := s.Consul.ServiceDeregisterOpts(id, q)
	if isNotFound(err) {
		err = nil // already gone: the goal
	}
	s.Metrics.consulOp("deregister", err)
	if err != nil {
		return fmt.Errorf("deregister %s from the Consul agent: %w", id, err)
	}
	return nil
}

func (s *Syncer) forget(key string) {
	s.mu.Lock()
	delete(s.held, key)
	s.countLocked()
	s.mu.Unlock()
}

// countLocked sets the registered-pods gauge; a record of a problem only
// is not a registration.
func (s *Syncer) countLocked() {
	n := 0
	for _, h := range s.held {
		if h.hash != 0 {
			n++
		}
	}
	s.Metrics.registered.Set(float64(n))
}

// problem reports a pod the node agent cannot register, once per distinct
// problem: an Event on the pod, a log line, a metric.
func (s *Syncer) problem(pod *corev1.Pod, err error) {
	key := pod.Namespace + "/" + pod.Name
	msg := err.Error()
	s.mu.Lock()
	if s.held == nil {
		s.held = map[string]*held{}
	}
	cur := s.held[key]
	if cur == nil {
		// Not registered: remember only the problem.
		cur = &held{uid: pod.UID}
		s.held[key] = cur
	}
	repeat := cur.problem == msg
	cur.problem = msg
	s.mu.Unlock()
	if repeat {
		return
	}
	s.Metrics.failures.WithLabelValues("invalid_pod").Inc()
	s.Log.Warn("cannot register", "pod", key, "err", msg)
	s.Events.Event(pod, corev1.EventTypeWarning, "MeshletRegistrationFailed", "not registered with Consul: "+msg)
}

// Resync lists the registrations the node agent owns on its Consul agent:
// those no pod of this node backs any more are removed (pods deleted
// while the node agent was down, moved away, replaced), and pods whose
// registrations are missing (the Consul agent restarted without them) are
// requeued.
func (s *Syncer) Resync() error {
	listed := time.Now()
	have, err := s.Consul.ServicesWithFilterOpts(managedFilter, &capi.QueryOptions{Namespace: s.ListNamespace})
	s.Metrics.consulOp("list", err)
	if err != nil {
		return fmt.Errorf("list the Consul agent's services: %w", err)
	}
	for id, svc := range have {
		ns, name, uid := svc.Meta[contract.MetaNamespace], svc.Meta[contract.MetaPodName], types.UID(svc.Meta[contract.MetaPodUID])
		if s.backed(id, ns, name, uid) {
			continue
		}
		if err := s.deregisterID(id, &capi.QueryOptions{Namespace: svc.Namespace}); err != nil {
			return err
		}
		s.Metrics.orphans.Inc()
		s.Log.Info("removed an orphaned registration", "id", id, "pod", ns+"/"+name, "uid", uid)
	}
	var missing []string
	s.mu.Lock()
	for key, h := range s.held {
		if h.hash == 0 || h.registeredAt.After(listed) {
			continue // a problem record; or registered after the list
		}
		if _, ok := have[h.svcID]; ok {
			if _, ok := have[h.proxyID]; ok {
				continue
			}
		}
		h.hash = 0 // makes Reconcile register again
		missing = append(missing, key)
	}
	s.mu.Unlock()
	for _, key := range missing {
		s.Metrics.reregistered.Inc()
		s.Log.Info("registration missing from the Consul agent: registering again", "pod", key)
		s.Requeue(key)
	}
	return nil
}

// backed says a pod of this node, injected and not finished, still
// stands behind registration id carrying its namespace, name and UID; or
// the node agent has just registered a newer pod of that name over it
// (the list was taken before).
func (s *Syncer) backed(id, ns, name string, uid types.UID) bool {
	if ns == "" || name == "" {
		return false
	}
	pod, err := s.Pods.Pods(ns).Get(name)
	if err != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return false
	}
	if _, ok := pod.Annotations[contract.RegistrationKey]; !ok {
		return false
	}
	if pod.UID == uid {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.held[ns+"/"+name]
	return h != nil && h.uid == pod.UID && h.hash != 0 && (id == h.svcID || id == h.proxyID)
}

// health is the check status and output for the pod's readiness. A pod
// being deleted is critical at once, so callers stop picking it while it
// drains.
func health(pod *corev1.Pod) (status, output string) {
	if pod.DeletionTimestamp != nil {
		return capi.HealthCritical, "Pod is terminating"
	}
	for _, c := range pod.Status.Conditions {
		if c.Type != corev1.PodReady {
			continue
		}
		if c.Status == corev1.ConditionTrue {
			return capi.HealthPassing, "Kubernetes health checks passing"
		}
		out := "Pod is not Ready"
		if c.Reason != "" {
			out += ": " + c.Reason
		}
		if c.Message != "" {
			out += ": " + c.Message
		}
		return capi.HealthCritical, out
	}
	return capi.HealthCritical, "Pod is not Ready"
}

// hashOf fingerprints the registrations apart from the check's status,
// which UpdateTTL changes without a new registration.
func hashOf(regs register.Registrations) (uint64, error) {
	svc := *regs.Service
	chk := *svc.Check
	chk.Status = ""
	svc.Check = &chk
	b, err := json.Marshal([]any{&svc, regs.Proxy})
	if err != nil {
		return 0, fmt.Errorf("fingerprint registrations: %w", err)
	}
	f := fnv.New64a()
	_, _ = f.Write(b)
	return f.Sum64() | 1, nil // never 0: 0 means "not registered"
}

func isNotFound(err error) bool {
	var se capi.StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}
