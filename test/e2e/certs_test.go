package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/kubeclient"
	"github.com/meshlet/meshlet/webhook/certs"
)

// TestCertsSelfManaged: two self-managed replicas against the real API
// server share one Secret, publish its CA to the MutatingWebhookConfiguration,
// and a rotation publishes the new CA next to the old.
func TestCertsSelfManaged(t *testing.T) {
	requireCluster(t)
	cs := clientset(t)
	ns := testNamespace(t, cs, "certs")
	mwc := neverMatchingWebhookConfig(t, cs, ns)
	cfg := certs.SelfManagedConfig{
		ServiceName: "webhook", ServiceNamespace: ns, WebhookConfigName: mwc, SecretName: "webhook-tls",
		Resync: 200 * time.Millisecond,
	}
	svcName := cfg.ServiceName + "." + ns + ".svc" // the name the API server dials
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	a, b := startSelfManaged(t, cfg, log.With("replica", "a")), startSelfManaged(t, cfg, log.With("replica", "b"))
	for _, r := range []*certs.SelfManaged{a, b} {
		waitFor(t, context.Background(), "the replicas to be ready", func(context.Context) (bool, error) {
			return r.Ready() == nil, r.Ready()
		})
	}

	secrets, err := cs.CoreV1().Secrets(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(secrets.Items) != 1 || secrets.Items[0].Name != cfg.SecretName {
		t.Fatalf("%d Secrets in %s, want only %s", len(secrets.Items), ns, cfg.SecretName)
	}
	first := servedLeaf(t, a)
	if !servedLeaf(t, b).Equal(first) {
		t.Errorf("the replicas serve serials %s and %s, want one", first.SerialNumber.Text(16), servedLeaf(t, b).SerialNumber.Text(16))
	}
	caPEM := secrets.Items[0].Data["ca.crt"]
	if !bytes.Equal(secrets.Items[0].Data["tls.crt"], pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: first.Raw})) {
		t.Error("the served leaf is not the Secret's tls.crt")
	}
	checkBundles(t, cs, mwc, caPEM)
	verifyLeaf(t, first, caPEM, svcName, time.Now())

	// A replica whose clock is 25 days ahead finds the 30-day leaf past
	// 2/3 of its life and rotates; the others adopt the new leaf.
	future := time.Now().Add(25 * 24 * time.Hour)
	rotCfg := cfg
	rotCfg.Now = func() time.Time { return time.Now().Add(25 * 24 * time.Hour) }
	startSelfManaged(t, rotCfg, log.With("replica", "c (clock +25d)"))
	var rotated *x509.Certificate
	waitFor(t, context.Background(), "both replicas to serve the rotated leaf", func(context.Context) (bool, error) {
		rotated = servedLeaf(t, a)
		return !rotated.Equal(first) && servedLeaf(t, b).Equal(rotated), nil
	})
	sec, err := cs.CoreV1().Secrets(ns).Get(context.Background(), cfg.SecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	caPEM = sec.Data["ca.crt"]
	if n := len(pemCerts(t, caPEM)); n != 2 {
		t.Errorf("ca.crt after the rotation holds %d CAs, want the new and the old", n)
	}
	checkBundles(t, cs, mwc, caPEM)
	verifyLeaf(t, first, caPEM, svcName, time.Now()) // a replica that has not synced yet still verifies
	verifyLeaf(t, rotated, caPEM, svcName, future)
}

// neverMatchingWebhookConfig creates a MutatingWebhookConfiguration that no
// object can ever match (an objectSelector on a label nothing has, failure
// policy Ignore, a Service that does not exist), so it is safe on a shared
// cluster; two webhooks, since every one must get the caBundle.
func neverMatchingWebhookConfig(t *testing.T, cs *kubernetes.Clientset, ns string) string {
	t.Helper()
	hook := func(name string) admissionv1.MutatingWebhook {
		return admissionv1.MutatingWebhook{
			Name: name,
			ClientConfig: admissionv1.WebhookClientConfig{
				Service: &admissionv1.ServiceReference{Namespace: ns, Name: "no-such-service", Path: ptr.To("/mutate")},
			},
			Rules: []admissionv1.RuleWithOperations{{
				Operations: []admissionv1.OperationType{admissionv1.Create},
				Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			ObjectSelector:          &metav1.LabelSelector{MatchLabels: map[string]string{"meshlet.io/certs-test-never-matches": ns}},
			FailurePolicy:           ptr.To(admissionv1.Ignore),
			SideEffects:             ptr.To(admissionv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          ptr.To[int32](1),
		}
	}
	mwc, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(context.Background(),
		&admissionv1.MutatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "meshlet-" + ns},
			Webhooks:   []admissionv1.MutatingWebhook{hook("a.certs.meshlet.io"), hook("b.certs.meshlet.io")},
		}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), mwc.Name, metav1.DeleteOptions{})
	})
	return mwc.Name
}

// startSelfManaged runs a replica until the test ends.
func startSelfManaged(t *testing.T, cfg certs.SelfManagedConfig, log *slog.Logger) *certs.SelfManaged {
	t.Helper()
	// The webhook's own client, against the real API server.
	rc, err := kubeclient.Config(suite.Kubeconfig, "meshlet-e2e")
	if err != nil {
		t.Fatal(err)
	}
	kc, err := kubeclient.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := certs.NewSelfManaged(cfg, kc, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	})
	return s
}

func servedLeaf(t *testing.T, s *certs.SelfManaged) *x509.Certificate {
	t.Helper()
	c, err := s.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf
}

// checkBundles asserts every webhook of the configuration has caPEM.
func checkBundles(t *testing.T, cs *kubernetes.Clientset, name string, caPEM []byte) {
	t.Helper()
	mwc, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range mwc.Webhooks {
		if !bytes.Equal(w.ClientConfig.CABundle, caPEM) {
			t.Errorf("webhook %s: caBundle is not the Secret's ca.crt", w.Name)
		}
	}
}

func pemCerts(t *testing.T, bundle []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for b, rest := pem.Decode(bundle); b != nil; b, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// verifyLeaf verifies leaf against caPEM for name at a time.
func verifyLeaf(t *testing.T, leaf *x509.Certificate, caPEM []byte, name string, at time.Time) {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool, CurrentTime: at}); err != nil {
		t.Errorf("leaf %s does not verify for %s: %v", leaf.SerialNumber.Text(16), name, err)
	}
}
