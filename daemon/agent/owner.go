package agent

import (
	"context"
	"fmt"
	"sync/atomic"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/meshlet/meshlet/kubeclient"
)

// owner follows the node agent's own DaemonSet from the start, so that the
// node agent knows at SIGTERM whether it is being uninstalled without asking
// the API server then. Asking then is too late on `helm uninstall`: Helm
// deletes the node agent's ServiceAccount and RBAC right after its DaemonSet,
// while the node agent's pods are still stopping, and a node agent that cannot
// tell must leave meshlet-cni installed (a rolling update must never
// remove it). The deletion reaches the watch first, while the node agent may
// still read its DaemonSet.
type owner struct {
	client    kubeclient.Interface
	namespace string
	name      string
	uid       types.UID
	deleted   atomic.Bool
}

// findOwner reads the node agent's pod for the DaemonSet that runs it.
func findOwner(ctx context.Context, c kubeclient.Interface, namespace, podName string) (*owner, error) {
	pod, err := c.Pods(namespace).Get(ctx, podName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get the agent's pod: %w", err)
	}
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.Kind != "DaemonSet" {
		return nil, fmt.Errorf("pod %s/%s is not run by a DaemonSet", namespace, podName)
	}
	return &owner{client: c, namespace: namespace, name: ref.Name, uid: ref.UID}, nil
}

// gone says whether ds (nil: absent) is no longer the node agent's owner: it
// is deleted, being deleted, or another DaemonSet of the same name.
func (o *owner) gone(ds *appsv1.DaemonSet) bool {
	return ds == nil || ds.DeletionTimestamp != nil || ds.UID != o.uid
}

// run watches the DaemonSet (by name: the node agent may read no other) until
// ctx ends, remembering its deletion.
func (o *owner) run(ctx context.Context) {
	byName := fields.OneTermEqualSelector("metadata.name", o.name).String()
	inf := cache.NewSharedIndexInformerWithOptions(listWatch(o.client.DaemonSets(o.namespace), byName),
		&appsv1.DaemonSet{}, cache.SharedIndexInformerOptions{})
	// The name is checked again: the field selector is the API server's
	// to apply.
	see := func(obj any, deleted bool) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if ds, ok := obj.(*appsv1.DaemonSet); ok && ds.Name == o.name && (deleted || o.gone(ds)) {
			o.deleted.Store(true)
		}
	}
	// Errors only on a stopped informer.
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { see(obj, false) },
		UpdateFunc: func(_, obj any) { see(obj, false) },
		DeleteFunc: func(obj any) { see(obj, true) },
	})
	inf.RunWithContext(ctx)
}

// isDeleted says whether the DaemonSet is gone: from the watch when it saw
// the deletion, else by asking the API server now.
func (o *owner) isDeleted(ctx context.Context) (bool, error) {
	if o.deleted.Load() {
		return true, nil
	}
	ds, err := o.client.DaemonSets(o.namespace).Get(ctx, o.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get DaemonSet %s/%s: %w", o.namespace, o.name, err)
	}
	return o.gone(ds), nil
}
