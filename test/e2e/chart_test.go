package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// TestChartDryRun: every value set the chart's tests render
// (deploy/daemonset/testdata/values) is accepted by the real API server,
// object by object, in a server-side dry run: what `helm install` would
// send passes the API server's validation and admission.
func TestChartDryRun(t *testing.T) {
	requireCluster(t)
	files, err := filepath.Glob(filepath.Join(root, cluster.MeshletChart, "testdata", "values", "*.yaml"))
	if err != nil || len(files) < 10 {
		t.Fatalf("value sets: %v, %v", files, err)
	}
	ctx := context.Background()
	cs := clientset(t)
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".yaml"), func(t *testing.T) {
			// Another release in its own namespace: every object is new,
			// so the dry run is a fresh install's, not a merge with the
			// live release.
			ns := testNamespace(t, cs, "chart")
			manifest, err := helmTemplate(t, ctx, "dryrun", filepath.Join(root, cluster.MeshletChart),
				"--namespace", ns, "--values", f)
			if err != nil {
				t.Fatal(err)
			}
			docs := 0
			for _, d := range strings.Split(manifest, "\n---") {
				if strings.Contains(d, "\nkind: ") {
					docs++
				}
			}
			file := filepath.Join(t.TempDir(), "manifest.yaml")
			if err := os.WriteFile(file, []byte(manifest), 0o644); err != nil {
				t.Fatal(err)
			}
			out := kubectl(t, "create", "--dry-run=server", "-f", file)
			if got := strings.Count(out, "(server dry run)"); got != docs || docs == 0 {
				t.Fatalf("%d of %d objects accepted:\n%s", got, docs, out)
			}
		})
	}
}

// TestChartUpgrade: `helm upgrade` with a change that rolls both the node agent
// and the webhook (their log level): the webhook injects all along (no
// annotated pod is refused), pods created while the node agent rolls get their
// redirection, the caBundle the webhook published survives Helm's merge,
// and the plugin stays chained.
func TestChartUpgrade(t *testing.T) {
	requireLocalNode(t, "upgrades the release with the local cluster's values and reads pods' rules in their netns")
	cs := clientset(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	mwc := func() []byte {
		c, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, cluster.WebhookName, metav1.GetOptions{})
		if err != nil || len(c.Webhooks) != 1 {
			t.Fatalf("webhook configuration: %v", err)
		}
		return c.Webhooks[0].ClientConfig.CABundle
	}
	ca := mwc()
	if len(ca) == 0 {
		t.Fatal("no caBundle published before the upgrade")
	}
	agentPods := func() map[string]bool {
		pods, err := cs.CoreV1().Pods(cluster.MeshletNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + cluster.AgentName})
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]bool{}
		for _, p := range pods.Items {
			names[p.Name] = true
		}
		return names
	}
	before := agentPods()
	ns := testNamespace(t, cs, "upgrade")
	t.Cleanup(func() {
		if err := lc.InstallMeshlet(context.Background()); err != nil {
			t.Errorf("restore the release: %v", err)
		}
	})

	// The webhook, asked every 100 ms from now until the rollout is over.
	var asked, refused atomic.Int64
	var lastErr atomic.Value
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			asked.Add(1)
			if err := cluster.WebhookInjects(ctx, cs); err != nil {
				refused.Add(1)
				lastErr.Store(err.Error())
			}
		}
	}()
	if err := lc.UpgradeMeshlet(ctx, "global.logLevel=info"); err != nil {
		t.Fatal(err)
	}
	// Pods created while the node agent rolls: one every 300 ms until the new
	// node agent is ready.
	var created []string
	deadline := time.Now().Add(2 * time.Minute)
	for i := 0; ; i++ {
		name := fmt.Sprintf("during-%d", i)
		// Named for Consul by annotation: no Service selects it.
		createPodSpec(t, cs, ns, pausePod(name, map[string]string{contract.Inject: "true", contract.Service: "upgrade-probe"}))
		created = append(created, name)
		now := agentPods()
		rolled := len(now) == 1
		for n := range now {
			rolled = rolled && !before[n]
		}
		if rolled && cluster.AgentReady(ctx, cs) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not roll in 2 min (pods %v)", now)
		}
		time.Sleep(300 * time.Millisecond)
	}
	waitWebhookRollout(t, ctx, cs)
	close(stop)
	<-polled
	t.Logf("webhook asked %d times during the upgrade, refused %d; %d pods created while the agent rolled", asked.Load(), refused.Load(), len(created))
	if refused.Load() > 0 {
		t.Errorf("the webhook refused %d of %d dry runs during the upgrade; last: %v", refused.Load(), asked.Load(), lastErr.Load())
	}
	if asked.Load() < 10 {
		t.Errorf("the webhook was asked only %d times", asked.Load())
	}
	if got := mwc(); string(got) != string(ca) {
		t.Errorf("the caBundle changed across the upgrade (%d bytes → %d)", len(ca), len(got))
	}
	if err := lc.RuntimeUsesPlugin(ctx, "meshlet-cni"); err != nil {
		t.Errorf("after the upgrade: %v", err)
	}
	for _, name := range created {
		pod := waitPodRunning(t, ctx, cs, ns, name)
		if !injected(pod) {
			t.Errorf("pod %s created during the upgrade was not injected", name)
			continue
		}
		if err := redirected(t, ctx, pod); err != nil {
			t.Errorf("pod %s created during the upgrade has no redirection: %v", name, err)
		}
	}
}

// TestChartUninstall: `helm uninstall` removes meshlet-cni from the node
// (its conflist entry, binary and kubeconfig), although Helm deletes the
// node agent's RBAC right after its DaemonSet, while the node agent's pods
// are still stopping; then the chart installs again.
//
// The webhook's self-managed certificate Secret, which the webhook made and
// the chart does not hold, goes too: it is owned by the
// MutatingWebhookConfiguration, which helm deletes.
func TestChartUninstall(t *testing.T) {
	requireLocalNode(t, "reads the node's CNI dirs and reinstalls meshlet with the local cluster's values")
	cs := clientset(t)
	secrets := cs.CoreV1().Secrets(cluster.MeshletNamespace)
	secretName := cluster.WebhookName + "-tls"
	before, err := secrets.Get(context.Background(), secretName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the webhook's Secret before the uninstall: %v", err)
	}
	uninstallRemovesPlugin(t, func(ctx context.Context) error {
		if _, err := lc.Helm(ctx, "uninstall", cluster.MeshletRelease, "--namespace", cluster.MeshletNamespace); err != nil {
			return err
		}
		waitFor(t, ctx, "the webhook's Secret deleted with its owner", func(ctx context.Context) (bool, error) {
			sec, err := secrets.Get(ctx, secretName, metav1.GetOptions{})
			if apierrors.IsNotFound(err) || (err == nil && sec.UID != before.UID) {
				return true, nil
			}
			return false, err
		})
		return nil
	})
}
