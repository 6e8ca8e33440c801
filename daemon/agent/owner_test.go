package agent

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/kubeclient/kubeclienttest"
)

func ownedAgent(dsUID types.UID) (*corev1.Pod, *appsv1.DaemonSet) {
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "meshlet-agent", Namespace: "meshlet", UID: dsUID}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "meshlet-agent-x", Namespace: "meshlet",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: ds.Name, UID: dsUID, Controller: ptr.To(true)}}}}
	return pod, ds
}

// forbidAll makes every later request fail as when the node agent's RBAC is
// gone (helm uninstall deletes it right after the DaemonSet).
func forbidAll(cs *fake.Clientset) {
	cs.PrependReactor("*", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: a.GetResource().Resource}, "", nil)
	})
}

// TestOwnerRemembersDeletion: the deletion seen by the watch decides at
// SIGTERM even when the API server no longer answers the node agent; without
// the watch's answer, a failing API server leaves the plugin installed.
func TestOwnerRemembersDeletion(t *testing.T) {
	pod, ds := ownedAgent("u1")
	cs := fake.NewClientset(pod, ds)
	c := kubeclienttest.FromClientset(cs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o, err := findOwner(ctx, c, "meshlet", pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	if o.name != "meshlet-agent" || o.uid != "u1" {
		t.Fatalf("owner %s %s", o.name, o.uid)
	}
	go o.run(ctx)
	if deleted, err := o.isDeleted(ctx); err != nil || deleted {
		t.Fatalf("before the deletion: %v, %v", deleted, err)
	}
	// Another DaemonSet of the namespace going away is not the node agent's.
	other := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "meshlet", UID: "u9"}}
	if _, err := cs.AppsV1().DaemonSets("meshlet").Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cs.AppsV1().DaemonSets("meshlet").Delete(ctx, "other", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if o.deleted.Load() {
		t.Fatal("another DaemonSet's deletion counted as the agent's")
	}
	if err := cs.AppsV1().DaemonSets("meshlet").Delete(ctx, ds.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !o.deleted.Load(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the watch did not see the deletion")
		}
	}
	forbidAll(cs)
	if deleted, err := o.isDeleted(ctx); err != nil || !deleted {
		t.Fatalf("after the deletion, API forbidden: %v, %v; want deleted", deleted, err)
	}

	// The same without the watch's answer: cannot tell.
	fresh := &owner{client: c, namespace: "meshlet", name: "meshlet-agent", uid: "u1"}
	if deleted, err := fresh.isDeleted(ctx); err == nil || deleted {
		t.Fatalf("no watch, API forbidden: %v, %v; want an error", deleted, err)
	}
}

// TestOwnerGone: what counts as the node agent's DaemonSet being deleted when
// it is read.
func TestOwnerGone(t *testing.T) {
	o := &owner{name: "meshlet-agent", uid: "u1"}
	now := metav1.Now()
	for _, tc := range []struct {
		name string
		ds   *appsv1.DaemonSet
		want bool
	}{
		{"absent", nil, true},
		{"there", &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{UID: "u1"}}, false},
		{"being deleted (foreground)", &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{UID: "u1", DeletionTimestamp: &now}}, true},
		{"replaced by another of the same name", &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{UID: "u2"}}, true},
	} {
		if got := o.gone(tc.ds); got != tc.want {
			t.Errorf("%s: gone = %v, want %v", tc.name, got, tc.want)
		}
	}
}
