package reaper

import (
	"context"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshlet/meshlet/kubeclient"
)

// PodResource is the pods' API, cluster-wide: all the reaper reads.
type PodResource = kubeclient.Resource[*corev1.Pod, *corev1.PodList]

// NewPodInformer caches every pod of the cluster, slimmed to what the
// reaper reads, with no resync: a pass lists Consul's tokens and reads the
// cache, it does not need pods delivered again.
func NewPodInformer(pods PodResource) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return pods.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return pods.Watch(ctx, o)
		},
	}
	inf := cache.NewSharedIndexInformerWithOptions(lw, &corev1.Pod{}, cache.SharedIndexInformerOptions{
		Indexers: cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
	})
	// SetTransform fails only on a started informer.
	_ = inf.SetTransform(slimPod)
	return inf
}

// slimPod keeps of a pod its name, namespace, UID, phase and the sum of
// its containers' restarts (in one container status, restartsName): the
// cache holds every pod of the cluster, and the rest of a pod (its spec,
// its containers' statuses, its managed fields) is most of its size.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID,
			ResourceVersion: p.ResourceVersion, DeletionTimestamp: p.DeletionTimestamp},
		Status: corev1.PodStatus{Phase: p.Status.Phase,
			ContainerStatuses: []corev1.ContainerStatus{{Name: restartsName, RestartCount: restarts(p)}}},
	}, nil
}

// restartsName names the slim pod's one container status, whose restart
// count is the sum of all its containers'.
const restartsName = "all-containers"

// restarts is the sum of a pod's containers' restarts, from a full pod or
// a slim one.
func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, c := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		n += c.RestartCount
	}
	return n
}

// finished: the pod's containers have all stopped and none starts again,
// so no sidecar of it holds a token any more.
func finished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// livePods are the live pods the tokens name, by namespace/name: looked up
// one by one, so that a pass costs what the tokens number, not the
// cluster's pods.
func livePods(lister corelisters.PodLister, toks []Token) map[string]types.UID {
	pods := map[string]types.UID{}
	for _, t := range toks {
		key, _, ok := podMeta(t.Description)
		if !ok {
			continue
		}
		if _, seen := pods[key]; seen {
			continue
		}
		ns, name, _ := strings.Cut(key, "/")
		p, err := lister.Pods(ns).Get(name)
		if err != nil || finished(p) {
			continue // the lister's only error is NotFound
		}
		pods[key] = p.UID
	}
	return pods
}

// onPodGone calls gone when a pod is deleted or finishes, and restarted
// when one of its containers has restarted: the moments a token may
// become an orphan (a restarted sidecar logs in again, and its first
// token is left).
func onPodGone(inf cache.SharedIndexInformer, gone, restarted func()) error {
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Pod)
			c, ok2 := cur.(*corev1.Pod)
			switch {
			case !ok1 || !ok2:
			case !finished(o) && finished(c):
				gone()
			case restarts(c) > restarts(o):
				restarted()
			}
		},
		DeleteFunc: func(any) { gone() },
	})
	return err
}
