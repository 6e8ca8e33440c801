package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/annotations"
	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// TestTransparentWalkthrough is the seed's headline walkthrough on the
// local cluster, through cluster DNS, meshlet-cni's redirection and
// `meshlet proxy` on both sides: users' manifests with only
// connect-inject added, `curl http://static-server/` answers "hello
// world", a deny intention makes the next request an empty reply (curl
// exit 52), deleting it brings the answer back. Then what transparent
// proxy must not break or open: the client reaching a pod outside the
// mesh, a pod outside the mesh reaching the server's app port, and the
// explicit-upstream variant on localhost.
func TestTransparentWalkthrough(t *testing.T) {
	requireCluster(t)
	cs := clientset(t)
	ns := testNamespace(t, cs, "tproxy")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	kubectl(t, "apply", "-n", ns, "-f", lc.Root+"/examples/mesh/")
	kubectl(t, "rollout", "status", "-n", ns, "deploy/static-server", "deploy/static-client", "--timeout=180s")

	expect := func(what, pod, url, want string) {
		t.Helper()
		waitCurl(t, ctx, what, ns, pod, url, want)
	}
	expectExit := func(what, pod, url string, codes ...string) {
		t.Helper()
		waitCurlExit(t, ctx, what, ns, pod, url, codes...)
	}
	client := "deploy/static-client"
	expect("hello world through DNS and the mesh", client, "http://static-server/", "hello world")

	consulCLI := func(args ...string) {
		t.Helper()
		argv := append([]string{args[0], args[1], "-http-addr", cluster.ConsulHTTPAddr()}, args[2:]...)
		out, err := exec.Command(lc.Root+"/bin/consul", argv...).CombinedOutput()
		if err != nil {
			t.Fatalf("consul %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	// Intentions outlive the test's namespace: never leave one behind.
	t.Cleanup(func() {
		_, _ = exec.Command(lc.Root+"/bin/consul", "intention", "delete", "-http-addr", cluster.ConsulHTTPAddr(),
			"static-client", "static-server").CombinedOutput()
	})
	consulCLI("intention", "create", "-deny", "static-client", "static-server")
	expectExit("the deny intention: an empty reply", client, "http://static-server/", "52")
	consulCLI("intention", "delete", "static-client", "static-server")
	expect("the intention deleted: hello world again", client, "http://static-server/", "hello world")

	// Outside the mesh: a plain pod serving on 8080, and a plain client.
	plain := createPod(t, cs, ns, "plain", nil, echoContainer("plain", "plain pod", 8080, 0))
	outsider := createPod(t, cs, ns, "outsider", nil, corev1.Container{Name: "static-client", Image: cluster.StaticClientImage,
		ImagePullPolicy: corev1.PullNever, Command: []string{"sleep", "3600"}})
	plainIP := waitPodRunning(t, ctx, cs, ns, plain.Name).Status.PodIP
	waitPodRunning(t, ctx, cs, ns, outsider.Name)
	expect("the client app reaching a pod outside the mesh (passthrough)", client, "http://"+plainIP+":8080/", "plain pod")

	servers, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=static-server"})
	if err != nil || len(servers.Items) != 1 {
		t.Fatalf("static-server pods: %v (%d)", err, len(servers.Items))
	}
	serverIP := servers.Items[0].Status.PodIP
	// The server's inbound rules send it to the proxy's TLS listener,
	// which a plain client cannot speak: nothing of the app comes back.
	expectExit("a pod outside the mesh not reaching the server's app", "pod/outsider", "http://"+serverIP+":8080/", "52", "56")

	// The explicit-upstream variant: the same client with an upstream on
	// localhost:1234.
	createPod(t, cs, ns, "upstream-client", map[string]string{annotations.Inject: "true",
		annotations.Upstreams: "static-server:1234", annotations.Service: "static-client"},
		corev1.Container{Name: "static-client", Image: cluster.StaticClientImage, ImagePullPolicy: corev1.PullNever,
			Command: []string{"sleep", "3600"}})
	expect("hello world on the explicit upstream localhost:1234", "pod/upstream-client", "http://localhost:1234/", "hello world")
}

// curlIn runs the curl-compatible client of container static-client in
// a pod (as kubectl names it: deploy/x or pod/x) with a 5 s limit. When
// curl fails, kubectl says "command terminated with exit code N" and
// exits N itself.
func curlIn(ns, pod, url string) (string, error) {
	return kubectlErr("exec", "-n", ns, pod, "-c", "static-client", "--", "curl", "-s", "-m", "5", url)
}

// waitCurl waits until curl in the pod answers with want.
func waitCurl(t *testing.T, ctx context.Context, what, ns, pod, url, want string) {
	t.Helper()
	waitFor(t, ctx, what, func(context.Context) (bool, error) {
		out, err := curlIn(ns, pod, url)
		if err != nil || !strings.Contains(out, want) {
			return false, fmt.Errorf("%q, %v", out, err)
		}
		return true, nil
	})
}

// waitCurlExit waits until curl in the pod exits with one of codes.
func waitCurlExit(t *testing.T, ctx context.Context, what, ns, pod, url string, codes ...string) {
	t.Helper()
	waitFor(t, ctx, what, func(context.Context) (bool, error) {
		out, err := curlIn(ns, pod, url)
		for _, c := range codes {
			if err != nil && strings.Contains(out, "exit code "+c) {
				return true, nil
			}
		}
		return false, fmt.Errorf("%q, %v; want curl to exit %v", out, err, codes)
	})
}
