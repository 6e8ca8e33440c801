package repair

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/iptables"
)

// redirectJSON is what consul-k8s' webhook writes for a default pod
// (iptables/testdata/consul-k8s-redirect.json).
const redirectJSON = `{"ConsulDNSIP":"","ConsulDNSPort":0,"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001,"ExcludeInboundPorts":null,"ExcludeOutboundPorts":null,"ExcludeOutboundCIDRs":null,"ExcludeUIDs":null,"NetNS":"","IptablesProvider":null}`

// injectedPod is a running pod meshlet's webhook injected (its
// registration written), with transparent proxy, an IP and no owner;
// mutations make the other cases.
func injectedPod(mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: "61ed4823-b4d5-4f3e-8201-356b440af00d",
			Annotations: map[string]string{
				contract.InjectStatus:    contract.Injected,
				contract.TProxyStatus:    contract.TProxyEnabled,
				contract.RedirectConfig:  redirectJSON,
				contract.RegistrationKey: `{"service":{"name":"web"}}`,
			}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.7",
			PodIPs: []corev1.PodIP{{IP: "10.244.0.7"}}},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func controlled(kind string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		yes := true
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: "web-5d9f8c7b6", UID: "77", Controller: &yes}}
	}
}

func TestDecide(t *testing.T) {
	var (
		bare      = injectedPod()
		owned     = injectedPod(controlled("ReplicaSet"))
		daemonSet = injectedPod(controlled("DaemonSet"))
		// An owner that is not the controller (a garbage-collection
		// parent) recreates nothing.
		ownedNotController = injectedPod(func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "x", UID: "78"}}
		})
		mirror = injectedPod(controlled("Node"), func(p *corev1.Pod) {
			p.Annotations[mirrorAnnotation] = "6d3b0d2a8f0e4d3b9c6e1f2a3b4c5d6e"
		})
		hostNet   = injectedPod(controlled("ReplicaSet"), func(p *corev1.Pod) { p.Spec.HostNetwork = true })
		pending   = injectedPod(controlled("ReplicaSet"), func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending })
		succeeded = injectedPod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })
		noIP      = injectedPod(controlled("ReplicaSet"), func(p *corev1.Pod) { p.Status.PodIP, p.Status.PodIPs = "", nil })
		onlyPodIP = injectedPod(controlled("ReplicaSet"), func(p *corev1.Pod) { p.Status.PodIPs = nil })
		deleting  = injectedPod(controlled("ReplicaSet"), func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{} })
		notInject = injectedPod(controlled("ReplicaSet"), func(p *corev1.Pod) { p.Annotations = nil })
		tproxyOff = injectedPod(controlled("ReplicaSet"), func(p *corev1.Pod) {
			delete(p.Annotations, contract.TProxyStatus)
			delete(p.Annotations, contract.RedirectConfig)
		})
		configOnly = injectedPod(controlled("ReplicaSet"), func(p *corev1.Pod) { delete(p.Annotations, contract.TProxyStatus) })
		// consul-k8s' injector: injected, its redirect config (CNI mode)
		// or none (its init container redirects), never meshlet's
		// registration.
		consulK8sCNI  = injectedPod(controlled("ReplicaSet"), func(p *corev1.Pod) { delete(p.Annotations, contract.RegistrationKey) })
		consulK8sInit = injectedPod(controlled("ReplicaSet"), func(p *corev1.Pod) {
			delete(p.Annotations, contract.RegistrationKey)
			delete(p.Annotations, contract.RedirectConfig)
		})
	)
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		v    Verdict
		mode Mode
		want Action
		why  string // part of the reason
	}{
		// auto, the default: delete what a controller recreates, repair
		// what nothing would.
		{"auto: owned pod is deleted", owned, Unprotected, ModeAuto, ActionDelete, "controller"},
		{"auto: DaemonSet pod is deleted", daemonSet, Unprotected, ModeAuto, ActionDelete, "controller"},
		{"empty mode is auto", owned, Unprotected, "", ActionDelete, "controller"},
		{"auto: bare pod is repaired", bare, Unprotected, ModeAuto, ActionRepair, "no controller"},
		{"auto: a non-controller owner is bare", ownedNotController, Unprotected, ModeAuto, ActionRepair, "no controller"},
		{"auto: static pod is reported", mirror, Unprotected, ModeAuto, ActionReport, "static pod"},
		{"repair: owned pod is repaired", owned, Unprotected, ModeRepair, ActionRepair, "repair"},
		{"repair: bare pod is repaired", bare, Unprotected, ModeRepair, ActionRepair, "repair"},
		{"repair: static pod is reported", mirror, Unprotected, ModeRepair, ActionReport, "static pod"},
		{"delete: owned pod is deleted", owned, Unprotected, ModeDelete, ActionDelete, "controller"},
		{"delete: bare pod is only reported", bare, Unprotected, ModeDelete, ActionReport, "nothing would recreate"},
		{"off: owned pod is reported", owned, Unprotected, ModeOff, ActionReport, "off"},
		{"off: bare pod is reported", bare, Unprotected, ModeOff, ActionReport, "off"},
		{"unknown mode reports", owned, Unprotected, "sometimes", ActionReport, "unknown repair mode"},
		{"redirect config only (consul-k8s without the status) is checked", configOnly, Unprotected, ModeAuto, ActionDelete, "controller"},
		{"only status.podIP is enough", onlyPodIP, Unprotected, ModeAuto, ActionDelete, "controller"},

		// Nothing to do, whatever the mode.
		{"protected", owned, Protected, ModeAuto, ActionNone, "in place"},
		{"protected, repair mode", bare, Protected, ModeRepair, ActionNone, "in place"},
		{"unchecked", owned, Unchecked, ModeDelete, ActionNone, "not checked"},
		{"host network", hostNet, Unprotected, ModeDelete, ActionNone, "host network"},
		{"pending with an IP (sidecar waiting)", pending, Unprotected, ModeDelete, ActionDelete, ""},
		{"succeeded", succeeded, Unprotected, ModeRepair, ActionNone, "Succeeded"},
		{"no IP yet: ADD may be running", noIP, Unprotected, ModeDelete, ActionNone, "no pod IP"},
		{"being deleted", deleting, Unprotected, ModeDelete, ActionNone, "being deleted"},
		{"not injected", notInject, Unprotected, ModeDelete, ActionNone, "not injected"},
		{"transparent proxy off", tproxyOff, Unprotected, ModeDelete, ActionNone, "transparent proxy is off"},
		// A pod meshlet did not inject is never changed.
		{"consul-k8s, CNI mode, auto", consulK8sCNI, Unprotected, ModeAuto, ActionNone, "another injector"},
		{"consul-k8s, CNI mode, delete", consulK8sCNI, Unprotected, ModeDelete, ActionNone, "another injector"},
		{"consul-k8s, CNI mode, repair", consulK8sCNI, Unprotected, ModeRepair, ActionNone, "another injector"},
		{"consul-k8s, init container, auto", consulK8sInit, Invalid, ModeAuto, ActionNone, "another injector"},

		// An invalid config has nothing to repair to, and deleting would
		// only trade a running pod for one that cannot start.
		{"invalid config, auto", owned, Invalid, ModeAuto, ActionReport, "invalid"},
		{"invalid config, delete", owned, Invalid, ModeDelete, ActionReport, "invalid"},
		{"invalid config, repair", bare, Invalid, ModeRepair, ActionReport, "invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.pod, tc.v, tc.mode)
			if d.Action != tc.want || !strings.Contains(d.Why, tc.why) {
				t.Errorf("Decide = %s (%q), want %s (…%s…)", d.Action, d.Why, tc.want, tc.why)
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeAuto, "auto": ModeAuto, " repair ": ModeRepair, "delete": ModeDelete, "off": ModeOff} {
		if got, err := ParseMode(in); got != want || err != nil {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"on", "Auto", "evict"} {
		if _, err := ParseMode(in); err == nil || !strings.Contains(err.Error(), "expected auto, repair, delete or off") {
			t.Errorf("ParseMode(%q) error = %v", in, err)
		}
	}
}

func TestFamilies(t *testing.T) {
	v4, v6, both := []iptables.Family{iptables.IPv4}, []iptables.Family{iptables.IPv6}, []iptables.Family{iptables.IPv4, iptables.IPv6}
	ips := func(s ...string) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Status.PodIP, p.Status.PodIPs = "", nil
			for _, ip := range s {
				p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
			}
		}
	}
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		want []iptables.Family
		err  string
	}{
		{"IPv4", injectedPod(ips("10.244.0.7")), v4, ""},
		{"IPv6", injectedPod(ips("fd00:10:244::7")), v6, ""},
		{"dual stack, IPv6 first", injectedPod(ips("fd00:10:244::7", "10.244.0.7")), both, ""},
		{"IPv4-mapped IPv6 is IPv4", injectedPod(ips("::ffff:10.244.0.7")), v4, ""},
		{"status.podIP only", injectedPod(func(p *corev1.Pod) { p.Status.PodIPs = nil }), v4, ""},
		{"no IP", injectedPod(ips()), nil, "no IP"},
		{"bad IP", injectedPod(ips("10.244.0.300")), nil, `pod IP "10.244.0.300"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Families(tc.pod)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("Families error = %v, want …%s…", err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("Families = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
