package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/webhook"
)

// TestOlderDocWalkthrough runs the older Consul documentation's
// walkthrough (connect-k8s-older) as written: its two bare Pods from
// examples/mesh-older/ (only the images differ), no Service, no
// ServiceAccount. The server is registered as static-server, its first
// container's name, with an Event saying so; `kubectl exec static-client
// -- curl -s localhost:1234` answers "hello world"; a deny intention makes
// the next request exit 52; deleting it brings hello world back. On a
// Consul with ACLs its pods, which run as ServiceAccount default, are
// denied at admission, saying why, rather than admitted and left
// unready.
func TestOlderDocWalkthrough(t *testing.T) {
	requireDataPlane(t, webhook.DataPlaneMeshlet, webhook.DataPlaneEnvoy)
	cs := clientset(t)
	cl := consul(t)
	ns := testNamespace(t, cs, "older")
	if suite.ACLs() {
		out, err := kubectlErr("apply", "-n", ns, "-f", exampleManifest(t, "mesh-older", "static-server.yaml"))
		if err == nil || !strings.Contains(out, `the pod runs as ServiceAccount "default"`) {
			t.Fatalf("with ACLs, the older document's server: %v: %s; want it denied for running as ServiceAccount default", err, out)
		}
		return
	}
	leaveNoRegistrations(t, cs, cl, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, f := range []string{"static-server.yaml", "static-client.yaml"} {
		kubectl(t, "apply", "-n", ns, "-f", exampleManifest(t, "mesh-older", f))
	}
	kubectl(t, "wait", "-n", ns, "--for=condition=Ready", "pod/static-server", "pod/static-client", "--timeout=120s")
	server, err := cs.CoreV1().Pods(ns).Get(ctx, "static-server", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitPodEvent(t, ctx, cs, ns, "static-server", "MeshletServiceNamedAfterContainer", `registered as service "static-server", its first container's name`)
	waitFor(t, ctx, "static-server and its proxy in the catalog at the pod's IP", func(context.Context) (bool, error) {
		err := catalogMatches(cl, ns, "static-server", map[string]string{server.Name: server.Status.PodIP})
		return err == nil, err
	})

	curl := []string{"exec", "-n", ns, "static-client", "--", "curl", "-s", "localhost:1234"}
	hello := func() (bool, error) {
		out, err := kubectlErr(curl...)
		return err == nil && strings.TrimSpace(out) == helloWorld, fmt.Errorf("%q, %v", out, err)
	}
	waitFor(t, ctx, "hello world through the upstream", func(context.Context) (bool, error) { return hello() })

	t.Cleanup(func() { _, _ = consulCLI("intention", "delete", "static-client", "static-server") })
	if out, err := consulCLI("intention", "create", "-deny", "static-client", "static-server"); err != nil {
		t.Fatalf("consul intention create -deny: %v: %s", err, out)
	}
	denied := func() (bool, error) {
		out, err := kubectlErr(curl...)
		return err != nil && strings.Contains(out, "command terminated with exit code 52"), fmt.Errorf("%q, %v", out, err)
	}
	if suite.DataPlane == webhook.DataPlaneMeshlet {
		// meshlet's proxy asks the Consul agent at each connection.
		if ok, err := denied(); !ok {
			t.Errorf("the first request after the deny: %v, want curl's exit code 52", err)
		}
	} else {
		waitFor(t, ctx, "exit code 52 after the deny", func(context.Context) (bool, error) { return denied() })
	}
	if out, err := consulCLI("intention", "delete", "static-client", "static-server"); err != nil {
		t.Fatalf("consul intention delete: %v: %s", err, out)
	}
	waitFor(t, ctx, "hello world after the intention's deletion", func(context.Context) (bool, error) { return hello() })
}
