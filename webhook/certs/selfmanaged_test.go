package certs

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshlet/meshlet/kubeclient/kubeclienttest"
)

const (
	testNS, testSecret, testMWC = "ns", "meshlet-webhook-tls", "meshlet"
	// pastTwoThirds puts the clock past 2/3 of a leaf minted at t0.
	pastTwoThirds = 2*validity/3 + time.Hour
)

var secretsGVR = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time    { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(now time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.now = now }

// webhookConfig is a configuration with one webhook without a caBundle and
// one with a stale one: both must end up with the Secret's.
const testMWCUID = "4f1b6a52-8d0e-4c1b-9a43-0d6c2b7e9f10"

// assertOwned: the Secret names the configuration as its owner, once.
func assertOwned(t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	sec, err := cs.CoreV1().Secrets(testNS).Get(context.Background(), testSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	refs := sec.OwnerReferences
	if len(refs) != 1 || refs[0].UID != testMWCUID || refs[0].Kind != "MutatingWebhookConfiguration" ||
		refs[0].APIVersion != "admissionregistration.k8s.io/v1" || refs[0].Name != testMWC {
		t.Errorf("the Secret's owners %+v, want the MutatingWebhookConfiguration %s alone", refs, testMWC)
	}
}

func webhookConfig() *admissionv1.MutatingWebhookConfiguration {
	return &admissionv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: testMWC, UID: testMWCUID},
		Webhooks: []admissionv1.MutatingWebhook{
			{Name: "pods.meshlet.io"},
			{Name: "other.meshlet.io", ClientConfig: admissionv1.WebhookClientConfig{CABundle: []byte("stale")}},
		},
	}
}

func replica(t *testing.T, cs kubernetes.Interface, clk *clock, reg prometheus.Registerer) *SelfManaged {
	t.Helper()
	s, err := NewSelfManaged(SelfManagedConfig{
		ServiceName: "wh", ServiceNamespace: testNS, WebhookConfigName: testMWC, SecretName: testSecret,
		Validity: validity, Now: clk.Now, Resync: 10 * time.Millisecond,
	}, kubeclienttest.FromClientset(cs), testLog(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func syncOK(t *testing.T, s *SelfManaged) {
	t.Helper()
	if _, err := s.sync(context.Background()); err != nil {
		t.Fatalf("sync: %v", err)
	}
}

func run(t *testing.T, s *SelfManaged) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	})
}

func secretData(t *testing.T, cs kubernetes.Interface) *material {
	t.Helper()
	sec, err := cs.CoreV1().Secrets(testNS).Get(context.Background(), testSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := parseMaterial(sec.Data)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// bundles are the caBundles of the configuration's webhooks.
func bundles(t *testing.T, cs kubernetes.Interface) [][]byte {
	t.Helper()
	mwc, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(context.Background(), testMWC, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, w := range mwc.Webhooks {
		out = append(out, w.ClientConfig.CABundle)
	}
	return out
}

func assertPublished(t *testing.T, cs kubernetes.Interface, caPEM []byte) {
	t.Helper()
	for i, b := range bundles(t, cs) {
		if !bytes.Equal(b, caPEM) {
			t.Errorf("webhook %d caBundle is not the Secret's ca.crt:\n%s", i, b)
		}
	}
}

// writes counts the Secret creates/updates and configuration patches.
func writes(cs *fake.Clientset) (n int) {
	for _, a := range cs.Actions() {
		switch a.GetVerb() {
		case "create", "update", "patch":
			n++
		}
	}
	return n
}

func TestSelfManagedTwoReplicasShareOneSecret(t *testing.T) {
	cs := fake.NewClientset(webhookConfig())
	clk := &clock{now: t0}
	reg := prometheus.NewRegistry()
	a := replica(t, cs, clk, reg)
	if err := a.Ready(); err == nil {
		t.Error("Ready before the first sync")
	}
	if _, err := a.GetCertificate(nil); err == nil {
		t.Error("GetCertificate before the first sync returned a certificate")
	}
	syncOK(t, a)

	sec, err := cs.CoreV1().Secrets(testNS).Get(context.Background(), testSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the first replica did not create the Secret: %v", err)
	}
	if sec.Type != corev1.SecretTypeTLS {
		t.Errorf("Secret type %s, want %s", sec.Type, corev1.SecretTypeTLS)
	}
	// Owned by the configuration: uninstalling deletes it.
	assertOwned(t, cs)
	mat := secretData(t, cs)
	assertPublished(t, cs, mat.caPEM)
	leaf := served(t, a)
	if !leaf.Equal(mat.leaf()) {
		t.Error("the served leaf is not the Secret's")
	}
	verify(t, leaf, mat.caPEM, t0)
	if err := a.Ready(); err != nil {
		t.Errorf("Ready: %v", err)
	}
	if got := metric(t, reg, "meshlet_webhook_certificate_expiry_timestamp_seconds", ""); got != float64(leaf.NotAfter.Unix()) {
		t.Errorf("expiry gauge %v, want %d", got, leaf.NotAfter.Unix())
	}
	if got := metric(t, reg, "meshlet_webhook_certificate_reloads_total", "ok"); got != 1 {
		t.Errorf("reloads ok %v, want 1", got)
	}

	before := writes(cs)
	b := replica(t, cs, clk, nil)
	syncOK(t, b)
	if got := served(t, b); got.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Errorf("second replica serves serial %s, want the first's %s", got.SerialNumber.Text(16), leaf.SerialNumber.Text(16))
	}
	if n := writes(cs) - before; n != 0 {
		t.Errorf("second replica wrote %d times, want 0 (no rotation, bundle already published)", n)
	}
	if err := b.Ready(); err != nil {
		t.Errorf("second replica Ready: %v", err)
	}
}

func TestSelfManagedRotation(t *testing.T) {
	cs := fake.NewClientset(webhookConfig())
	clk := &clock{now: t0}
	a, b := replica(t, cs, clk, nil), replica(t, cs, clk, nil)
	syncOK(t, a)
	syncOK(t, b)
	old := secretData(t, cs)

	// publish before serve: when the rotated bundle reaches the API
	// server, the rotating replica must still serve the old leaf.
	var atPatch atomic.Pointer[string]
	cs.PrependReactor("patch", "mutatingwebhookconfigurations", func(k8stesting.Action) (bool, runtime.Object, error) {
		s := served(t, b).SerialNumber.Text(16)
		atPatch.Store(&s)
		return false, nil, nil
	})
	now := t0.Add(pastTwoThirds)
	clk.Set(now)
	syncOK(t, b)

	cur := secretData(t, cs)
	if cur.leaf().Equal(old.leaf()) {
		t.Fatal("no rotation past 2/3 of the leaf's validity")
	}
	if !served(t, b).Equal(cur.leaf()) {
		t.Error("the rotating replica does not serve the new leaf")
	}
	if p := atPatch.Load(); p == nil || *p != old.leaf().SerialNumber.Text(16) {
		t.Errorf("serial served while publishing the new caBundle = %v, want the old %s", p, old.leaf().SerialNumber.Text(16))
	}
	if len(cur.cas) != 2 || !cur.cas[0].Equal(cur.issuer()) || !cur.cas[1].Equal(old.issuer()) {
		t.Errorf("ca.crt holds %d certificates, want the new CA then the old", len(cur.cas))
	}
	assertPublished(t, cs, cur.caPEM)
	verify(t, old.leaf(), cur.caPEM, now) // what a still serves until it syncs
	verify(t, cur.leaf(), cur.caPEM, now)

	before := writes(cs)
	syncOK(t, a)
	syncOK(t, b)
	if !served(t, a).Equal(cur.leaf()) {
		t.Error("the other replica does not adopt the rotated leaf")
	}
	if n := writes(cs) - before; n != 0 {
		t.Errorf("%d writes after the rotation, want 0 (rotated once)", n)
	}
}

// TestSelfManagedRaces: a replica losing a race to another uses the
// winner's certificate instead of overwriting it.
func TestSelfManagedRaces(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start time.Time // clock at the loser's sync; the Secret (if any) is minted at t0
		empty bool      // no Secret at first
		verb  string    // the loser's request the winner's write lands just before
		// fail: what the loser's request then gets. nil: it goes through
		// (the Get that re-reads the Secret before publishing).
		fail func(winner *corev1.Secret) error
	}{
		{name: "both create", start: t0, empty: true, verb: "create", fail: func(w *corev1.Secret) error {
			return apierrors.NewAlreadyExists(secretsGVR.GroupResource(), w.Name)
		}},
		{name: "both rotate", start: t0.Add(pastTwoThirds), verb: "update", fail: func(w *corev1.Secret) error {
			return apierrors.NewConflict(secretsGVR.GroupResource(), w.Name, nil)
		}},
		// The loser rotates too, but the winner's Secret lands between
		// its update and its publish: the loser's bundle is stale.
		{name: "other rotates before our publish", start: t0.Add(pastTwoThirds), verb: "get"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset(webhookConfig())
			clk := &clock{now: t0}
			if !tc.empty {
				syncOK(t, replica(t, cs, clk, nil))
			}
			clk.Set(tc.start)
			// The winner's Secret: a fresh pair, and a resourceVersion
			// (the fake keeps none) that tells it from the loser's read.
			mat, err := mint(dnsNames("wh", testNS), tc.start, validity, nil)
			if err != nil {
				t.Fatal(err)
			}
			winner := &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: testSecret, Namespace: testNS, ResourceVersion: "winner"},
				Type:       corev1.SecretTypeTLS, Data: mat.data(),
			}
			gets := 0
			var once sync.Once
			cs.PrependReactor(tc.verb, "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
				if gets++; tc.verb == "get" && gets != 2 { // 2nd get: the re-read before publishing
					return false, nil, nil
				}
				handled, err := false, error(nil)
				once.Do(func() {
					if tc.empty {
						err = cs.Tracker().Create(secretsGVR, winner, testNS)
					} else {
						err = cs.Tracker().Update(secretsGVR, winner, testNS)
					}
					if err == nil && tc.fail != nil {
						handled, err = true, tc.fail(winner)
					}
				})
				return handled, nil, err
			})
			loser := replica(t, cs, clk, nil)
			syncOK(t, loser)
			if got := secretData(t, cs); !got.leaf().Equal(mat.leaf()) {
				t.Error("the loser overwrote the winner's Secret")
			}
			if !served(t, loser).Equal(mat.leaf()) {
				t.Error("the loser does not serve the winner's leaf")
			}
			assertPublished(t, cs, mat.caPEM)
			if err := loser.Ready(); err != nil {
				t.Errorf("Ready: %v", err)
			}
		})
	}
}

func TestSelfManagedWebhookConfigLater(t *testing.T) {
	cs := fake.NewClientset()
	s := replica(t, cs, &clock{now: t0}, nil)
	run(t, s)
	// No Secret without the configuration that owns it.
	waitFor(t, "unready for the configuration", func() bool {
		err := s.Ready()
		return err != nil && strings.Contains(err.Error(), "MutatingWebhookConfiguration "+testMWC+" not found")
	})
	if _, err := cs.CoreV1().Secrets(testNS).Get(context.Background(), testSecret, metav1.GetOptions{}); err == nil {
		t.Error("the Secret was made before the MutatingWebhookConfiguration that owns it")
	}
	if _, err := s.GetCertificate(nil); err == nil {
		t.Error("a certificate served without a Secret")
	}
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(context.Background(), webhookConfig(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Ready", func() bool { return s.Ready() == nil })
	mat := secretData(t, cs)
	assertPublished(t, cs, mat.caPEM)
	verify(t, served(t, s), bundles(t, cs)[0], t0)
	assertOwned(t, cs)
}

// TestSelfManagedAdoptsSecret: a valid Secret without an owner (made by
// an older meshlet) is adopted by the configuration, certificate kept.
func TestSelfManagedAdoptsSecret(t *testing.T) {
	cs := fake.NewClientset(webhookConfig())
	clk := &clock{now: t0}
	syncOK(t, replica(t, cs, clk, nil))
	mat := secretData(t, cs)
	sec, err := cs.CoreV1().Secrets(testNS).Get(context.Background(), testSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec.OwnerReferences = nil
	if _, err := cs.CoreV1().Secrets(testNS).Update(context.Background(), sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	syncOK(t, replica(t, cs, clk, nil))
	assertOwned(t, cs)
	if got := secretData(t, cs); !bytes.Equal(got.caPEM, mat.caPEM) {
		t.Error("adopting the Secret changed its certificate")
	}
}

// TestSelfManagedPublishFails: while the new caBundle cannot be published,
// the replica keeps serving the leaf the API server can verify.
func TestSelfManagedPublishFails(t *testing.T) {
	cs := fake.NewClientset(webhookConfig())
	clk := &clock{now: t0}
	reg := prometheus.NewRegistry()
	s := replica(t, cs, clk, reg)
	syncOK(t, s)
	old := served(t, s)

	var forbid atomic.Bool
	forbid.Store(true)
	cs.PrependReactor("patch", "mutatingwebhookconfigurations", func(k8stesting.Action) (bool, runtime.Object, error) {
		if forbid.Load() {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "mutatingwebhookconfigurations"}, testMWC, nil)
		}
		return false, nil, nil
	})
	clk.Set(t0.Add(pastTwoThirds))
	run(t, s)
	waitFor(t, "a counted error", func() bool { return metric(t, reg, "meshlet_webhook_certificate_reloads_total", "error") >= 1 })
	if !served(t, s).Equal(old) {
		t.Error("serves the new leaf though its CA is not published")
	}
	if err := s.Ready(); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("Ready = %v, want the publish error", err)
	}
	forbid.Store(false)
	waitFor(t, "Ready", func() bool { return s.Ready() == nil })
	mat := secretData(t, cs)
	if !served(t, s).Equal(mat.leaf()) || mat.leaf().Equal(old) {
		t.Error("does not serve the rotated leaf once its CA is published")
	}
	assertPublished(t, cs, mat.caPEM)
}

func TestNewSelfManagedConfig(t *testing.T) {
	good := SelfManagedConfig{ServiceName: "wh", ServiceNamespace: testNS, WebhookConfigName: testMWC, SecretName: testSecret}
	for _, tc := range []struct {
		name string
		edit func(*SelfManagedConfig)
		want string // substring of the error; "" = valid
	}{
		{"defaults", func(*SelfManagedConfig) {}, ""},
		{"no service", func(c *SelfManagedConfig) { c.ServiceName = "" }, "ServiceName"},
		{"no secret", func(c *SelfManagedConfig) { c.SecretName = "" }, "SecretName"},
		{"negative validity", func(c *SelfManagedConfig) { c.Validity = -time.Hour }, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.edit(&cfg)
			s, err := NewSelfManaged(cfg, kubeclienttest.FromClientset(fake.NewClientset()), nil, nil)
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if err == nil && (s.cfg.Validity != 720*time.Hour || s.cfg.Resync != time.Minute || s.cfg.Now == nil) {
				t.Errorf("defaults not applied: %+v", s.cfg)
			}
		})
	}
}

// TestSelfManagedExistingSecret: a Secret found at start is adopted,
// replaced or refused.
func TestSelfManagedExistingSecret(t *testing.T) {
	valid, err := mint(dnsNames("wh", testNS), t0, validity, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		typ     corev1.SecretType
		data    map[string][]byte
		adopted bool   // the replica serves valid's leaf, unchanged
		wantErr string // sync fails with this
	}{
		{name: "Opaque with the three keys", typ: corev1.SecretTypeOpaque, data: valid.data(), adopted: true},
		{name: "tls with garbage", typ: corev1.SecretTypeTLS, data: map[string][]byte{keyCert: []byte("x"), keyKey: []byte("y")}},
		{name: "another type", typ: corev1.SecretTypeDockerConfigJson, data: valid.data(), wantErr: "has type kubernetes.io/dockerconfigjson"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset(webhookConfig(), &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: testSecret, Namespace: testNS},
				Type:       tc.typ, Data: tc.data,
			})
			s := replica(t, cs, &clock{now: t0}, nil)
			_, err := s.sync(context.Background())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("sync = %v, want %q", err, tc.wantErr)
				}
				if s.Ready() == nil {
					t.Error("Ready though sync failed")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sec, err := cs.CoreV1().Secrets(testNS).Get(context.Background(), testSecret, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if sec.Type != tc.typ {
				t.Errorf("Secret type changed to %s", sec.Type)
			}
			mat := secretData(t, cs)
			if got := mat.leaf().Equal(valid.leaf()); got != tc.adopted {
				t.Errorf("Secret's leaf kept = %v, want %v", got, tc.adopted)
			}
			if !served(t, s).Equal(mat.leaf()) {
				t.Error("does not serve the Secret's leaf")
			}
			assertPublished(t, cs, mat.caPEM)
		})
	}
}
