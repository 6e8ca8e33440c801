package agent

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshlet/meshlet/kubeclient"
)

// informers are the node agent's two caches: the pods of its node (a field
// selector on spec.nodeName, so its cost follows its node, not the
// cluster) and the Services of every namespace (to name a pod's service
// and find its ClusterIP).
type informerSet struct {
	podInf, svcInf cache.SharedIndexInformer
	done           sync.WaitGroup
}

// resyncPeriod re-delivers every cached pod to the handlers, a backstop
// for a lost update; the Consul side has its own, faster resync.
const resyncPeriod = 10 * time.Minute

func newInformers(c kubeclient.Interface, node string) *informerSet {
	onNode := fields.OneTermEqualSelector("spec.nodeName", node).String()
	podInf := newInformer(&corev1.Pod{}, slimPod, listWatch(c.Pods(metav1.NamespaceAll), onNode))
	svcInf := newInformer(&corev1.Service{}, slimService, listWatch(c.Services(metav1.NamespaceAll), ""))
	return &informerSet{podInf: podInf, svcInf: svcInf}
}

// listWatch lists and watches r, through a field selector when one is
// given.
func listWatch[T, L runtime.Object](r kubeclient.Resource[T, L], fieldSelector string) *cache.ListWatch {
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = fieldSelector
			return r.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = fieldSelector
			return r.Watch(ctx, o)
		},
	}
}

// newInformer is what client-go's informer factory builds for a kind: a
// shared informer indexed by namespace, for the listers.
func newInformer(obj runtime.Object, transform cache.TransformFunc, lw *cache.ListWatch) cache.SharedIndexInformer {
	inf := cache.NewSharedIndexInformerWithOptions(lw, obj, cache.SharedIndexInformerOptions{
		ResyncPeriod: resyncPeriod,
		Indexers:     cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
	})
	// SetTransform fails only on a started informer.
	_ = inf.SetTransform(transform)
	return inf
}

// start runs both informers until ctx ends; wait returns after they stop.
func (is *informerSet) start(ctx context.Context) {
	for _, inf := range []cache.SharedIndexInformer{is.podInf, is.svcInf} {
		is.done.Add(1)
		go func() {
			defer is.done.Done()
			inf.RunWithContext(ctx)
		}()
	}
}

func (is *informerSet) wait() { is.done.Wait() }

// slimPod keeps of a pod only what the node agent reads: its metadata (not the
// managed fields, often the largest part), whether it uses the host
// network, its ServiceAccount (with ACLs, the only service it may be
// registered as), its containers' names (a pod no Service selects is
// registered under its first one's), and its phase, conditions and IPs.
// Containers, volumes and container statuses are most of a pod, and an
// injected pod's are larger still; with 110 pods on a node they would be
// most of the node agent's heap.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	meta := p.ObjectMeta
	meta.ManagedFields = nil
	containers := make([]corev1.Container, len(p.Spec.Containers))
	for i, c := range p.Spec.Containers {
		containers[i] = corev1.Container{Name: c.Name}
	}
	return &corev1.Pod{
		TypeMeta:   p.TypeMeta,
		ObjectMeta: meta,
		Spec: corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork,
			ServiceAccountName: p.Spec.ServiceAccountName, Containers: containers},
		Status: corev1.PodStatus{Phase: p.Status.Phase, Conditions: p.Status.Conditions,
			PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}, nil
}

// slimService keeps of a Service only what registrations use (name,
// namespace, selector, ClusterIP, ports): with thousands of Services in
// the cluster the cache is most of the node agent's memory.
func slimService(obj any) (any, error) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	slim := &corev1.Service{
		TypeMeta: s.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, UID: s.UID,
			ResourceVersion: s.ResourceVersion, DeletionTimestamp: s.DeletionTimestamp},
		Spec: corev1.ServiceSpec{Selector: s.Spec.Selector, ClusterIP: s.Spec.ClusterIP, Type: s.Spec.Type},
	}
	for _, p := range s.Spec.Ports {
		slim.Spec.Ports = append(slim.Spec.Ports, corev1.ServicePort{Name: p.Name, Port: p.Port, Protocol: p.Protocol})
	}
	return slim, nil
}

// wire connects the caches to the work queue: every change of a pod
// queues it; a change of a Service queues the pods of its namespace on
// this node, whose service name or virtual IP it may change.
func (is *informerSet) wire(q workqueue.TypedInterface[string]) error {
	podKey := func(obj any) {
		if k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			q.Add(k)
		}
	}
	if _, err := is.podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    podKey,
		UpdateFunc: func(_, obj any) { podKey(obj) },
		DeleteFunc: podKey,
	}); err != nil {
		return err
	}
	lister := is.podLister()
	byNamespace := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		s, ok := obj.(*corev1.Service)
		if !ok {
			return
		}
		pods, _ := lister.Pods(s.Namespace).List(labels.Everything())
		for _, p := range pods {
			q.Add(p.Namespace + "/" + p.Name)
		}
	}
	_, err := is.svcInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    byNamespace,
		UpdateFunc: func(_, obj any) { byNamespace(obj) },
		DeleteFunc: byNamespace,
	})
	return err
}

func (is *informerSet) podLister() corelisters.PodLister {
	return corelisters.NewPodLister(is.podInf.GetIndexer())
}

func (is *informerSet) serviceLister() corelisters.ServiceLister {
	return corelisters.NewServiceLister(is.svcInf.GetIndexer())
}
