package agent

import (
	"testing"

	capi "github.com/hashicorp/consul/api"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/daemon/register"
	"github.com/meshlet/meshlet/daemon/repair"
)

// TestSlimPodKeepsWhatTheAgentReads: the registrations, the repair's
// decision and the pod cache come out the same from the slimmed pod as
// from the full one; containers (but their names) and managed fields are
// gone.
func TestSlimPodKeepsWhatTheAgentReads(t *testing.T) {
	full := injected("web-1", "u1", true)
	full.OwnerReferences = []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web", Controller: ptrTrue()}}
	full.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	full.Spec = corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "app", Image: "x"}}}
	full.Status.PodIPs = []corev1.PodIP{{IP: full.Status.PodIP}}
	full.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Ready: true}}
	obj, err := slimPod(full.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	slim := obj.(*corev1.Pod)
	if len(slim.Spec.Containers) != 1 || slim.Spec.Containers[0].Name != "app" || slim.Spec.Containers[0].Image != "" ||
		slim.ManagedFields != nil || slim.Status.ContainerStatuses != nil {
		t.Fatalf("slimPod kept more of the containers than their names, managed fields or container statuses: %+v", slim)
	}
	svcs := []*corev1.Service{{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, ClusterIP: "10.96.0.20", Ports: []corev1.ServicePort{{Port: 80}}}}}
	a, errA := register.For(full, svcs)
	b, errB := register.For(slim, svcs)
	ha, _ := hashOf(a)
	hb, _ := hashOf(b)
	if errA != nil || errB != nil || ha != hb {
		t.Fatalf("registrations differ: %v %v %d %d", errA, errB, ha, hb)
	}
	if sa, _ := health(full); sa != capi.HealthPassing {
		t.Fatalf("fixture not ready: %s", sa)
	}
	if sa, sb := func() (string, string) { a, _ := health(full); b, _ := health(slim); return a, b }(); sa != sb {
		t.Fatalf("health %s from the full pod, %s from the slim one", sa, sb)
	}
	for _, v := range []repair.Verdict{repair.Unprotected, repair.Protected} {
		if da, db := repair.Decide(full, v, repair.ModeAuto), repair.Decide(slim, v, repair.ModeAuto); da != db {
			t.Fatalf("repair decides %+v on the full pod and %+v on the slim one", da, db)
		}
	}
	if slim.Spec.NodeName != "n1" || slim.UID != full.UID || len(slim.Annotations) != len(full.Annotations) {
		t.Fatalf("slim pod lost its identity or annotations: %+v", slim.ObjectMeta)
	}
}

// TestSlimPodKeepsTheServiceAccount: with an auth method the registration
// is refused unless the pod's service is named like its ServiceAccount; the
// slimmed pod must say the same (it once lost the ServiceAccount, and every
// pod on a Consul with ACLs was refused as "default").
func TestSlimPodKeepsTheServiceAccount(t *testing.T) {
	enc, err := contract.Registration{Port: 8080, DataPlane: "meshlet", TransparentProxy: true, AuthMethod: "k8s"}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	svcs := []*corev1.Service{{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, ClusterIP: "10.96.0.20", Ports: []corev1.ServicePort{{Port: 80}}}}}
	for _, sa := range []string{"web", "api"} {
		full := injected("web-1", "u1", true)
		full.Annotations[contract.RegistrationKey] = enc
		full.Spec = corev1.PodSpec{NodeName: "n1", ServiceAccountName: sa, Containers: []corev1.Container{{Name: "app", Image: "x"}}}
		obj, err := slimPod(full.DeepCopy())
		if err != nil {
			t.Fatal(err)
		}
		_, errFull := register.For(full, svcs)
		_, errSlim := register.For(obj.(*corev1.Pod), svcs)
		if (errFull == nil) != (sa == "web") || (errFull == nil) != (errSlim == nil) {
			t.Errorf("ServiceAccount %s: the full pod registers with %v, the slim one with %v; want both to succeed only for web", sa, errFull, errSlim)
		}
	}
}

// TestSlimPodKeepsContainerNames: a pod no Service selects registers under
// its first container's name, from the slim pod as from the full one.
func TestSlimPodKeepsContainerNames(t *testing.T) {
	full := injected("static-server", "u1", true)
	full.Spec = corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: contract.MeshletSidecarName, Image: "m"}, {Name: "static-server", Image: "x"}}}
	obj, err := slimPod(full.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	regs, err := register.For(obj.(*corev1.Pod), nil)
	if err != nil || regs.Service.Name != "static-server" {
		t.Fatalf("the slim pod registers as %+v, %v; want service static-server", regs.Service, err)
	}
	if c := obj.(*corev1.Pod).Spec.Containers; len(c) != 2 || c[1].Image != "" {
		t.Errorf("slim containers %+v: want the names alone", c)
	}
}

func ptrTrue() *bool { b := true; return &b }
