package agent

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestSandboxNotice: meshlet-cni's notice registers a pod kubelet has not
// reported an IP for yet, at the notice's IP, and only that pod.
func TestSandboxNotice(t *testing.T) {
	f := newFixture(t)
	p := injected("web-1", "u1", false)
	p.Status.PodIP = ""
	f.put(t, p)
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f) // no IP, no notice: nothing to register yet

	f.s.SandboxUp("shop", "web-1", "u1", []netip.Addr{netip.MustParseAddr("10.244.0.7"), netip.MustParseAddr("fd00::7")})
	if !slices.Equal(f.requeued, []string{"shop/web-1"}) {
		t.Fatalf("requeued %q, want the pod's key", f.requeued)
	}
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f, "register "+svcID, "register "+proxyID)
	if got := f.consul.services[svcID].Address; got != "10.244.0.7" {
		t.Fatalf("registered at %q, want the notice's first IP", got)
	}
	if got := f.consul.checks[checkID]; got != "critical" {
		t.Fatalf("check %q: a pod not Ready must stay critical", got)
	}
	if p.Status.PodIP != "" {
		t.Fatal("the informer's pod object was changed")
	}

	// Kubelet reports the same IP: nothing to do, the notice is dropped.
	p = injected("web-1", "u1", false)
	f.put(t, p)
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f)
	if _, ok := f.s.sandboxes["shop/web-1"]; ok {
		t.Fatal("the notice outlived kubelet's report of the IP")
	}
}

// TestSandboxNoticeOtherPod: a notice for a pod of the same name but
// another UID (the informer still holds the old pod) is not applied to the
// old one, and waits for the new one.
func TestSandboxNoticeOtherPod(t *testing.T) {
	f := newFixture(t)
	old := injected("web-1", "u-old", false)
	old.Status.PodIP = ""
	f.put(t, old)
	f.s.SandboxUp("shop", "web-1", "u-new", []netip.Addr{netip.MustParseAddr("10.244.0.8")})
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f)

	young := injected("web-1", "u-new", false)
	young.Status.PodIP = ""
	f.put(t, young)
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f, "register "+svcID, "register "+proxyID)
	if got := f.consul.services[svcID].Address; got != "10.244.0.8" {
		t.Fatalf("registered at %q, want the new pod's notice", got)
	}
}

// TestSandboxNoticeStatusWins: kubelet's IP, once reported, is the one
// registered, whatever a notice said; an expired notice is not used.
func TestSandboxNoticeStatusWins(t *testing.T) {
	f := newFixture(t)
	f.put(t, injected("web-1", "u1", false)) // status IP 10.244.0.7
	f.s.SandboxUp("shop", "web-1", "u1", []netip.Addr{netip.MustParseAddr("10.244.0.99")})
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f, "register "+svcID, "register "+proxyID)
	if got := f.consul.services[svcID].Address; got != "10.244.0.7" {
		t.Fatalf("registered at %q, want kubelet's IP", got)
	}

	g := newFixture(t)
	p := injected("web-2", "u2", false)
	p.Status.PodIP = ""
	g.put(t, p)
	g.s.SandboxUp("shop", "web-2", "u2", []netip.Addr{netip.MustParseAddr("10.244.0.5")})
	h := g.s.sandboxes["shop/web-2"]
	h.at = time.Now().Add(-sandboxHintTTL - time.Second)
	g.s.sandboxes["shop/web-2"] = h
	g.reconcile(t, "shop/web-2")
	wantCalls(t, g)
	if len(g.s.sandboxes) != 0 {
		t.Fatal("an expired notice was kept")
	}
}
