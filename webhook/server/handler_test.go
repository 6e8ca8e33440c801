package server

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/webhook"
)

func testConfig() webhook.Config {
	c := webhook.DefaultConfig()
	c.DataPlane, c.ConsulImage = webhook.DataPlaneConsul, "localhost/meshlet/consul:dev"
	return c
}

func testPod(ann map[string]string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-", Annotations: ann},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "static-server",
			Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
	}
}

// reviewBody is an AdmissionReview as the API server sends it.
func reviewBody(t testing.TB, kind metav1.GroupVersionKind, op admissionv1.Operation, obj any) []byte {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: types.UID("uid-1"), Kind: kind, Namespace: "shop",
			Operation: op, Object: runtime.RawExtension{Raw: raw}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var podKind = metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}

func newTestHandler() (*Handler, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	cfg := testConfig()
	return &Handler{Config: cfg, Log: slog.New(slog.DiscardHandler), Metrics: NewMetrics(reg, cfg.DataPlane)}, reg
}

func post(t *testing.T, h http.Handler, body []byte) (*http.Response, admissionv1.AdmissionReview) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, PathMutate, bytes.NewReader(body)))
	resp := rec.Result()
	var out admissionv1.AdmissionReview
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("decode answer: %v", err)
		}
		if out.Response == nil || out.Response.UID != "uid-1" {
			t.Fatalf("answer %+v: want the request's UID echoed", out.Response)
		}
		if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" {
			t.Fatalf("answer is %s %s, want admission.k8s.io/v1 AdmissionReview", out.APIVersion, out.Kind)
		}
	}
	return resp, out
}

func TestHandler(t *testing.T) {
	inject := map[string]string{contract.Inject: "true"}
	for _, tc := range []struct {
		name       string
		body       []byte
		status     int
		allowed    bool
		patched    bool
		message    string // in the denial
		warning    string
		result     string // metrics label counted
		denialKeys []string
		foreign    float64 // other_injector_pods_total after the review
	}{
		{name: "another injector's pod passes untouched, counted",
			body: reviewBody(t, podKind, admissionv1.Create, testPod(map[string]string{contract.InjectStatus: "injected",
				contract.RedirectConfig: `{"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001}`})),
			status: 200, allowed: true, result: resultSkipped, foreign: 1},
		{name: "injected", body: reviewBody(t, podKind, admissionv1.Create, testPod(inject)),
			status: 200, allowed: true, patched: true, result: resultInjected},
		{name: "not annotated", body: reviewBody(t, podKind, admissionv1.Create, testPod(nil)),
			status: 200, allowed: true, result: resultSkipped},
		{name: "bad upstream denied with 400 naming it",
			body:   reviewBody(t, podKind, admissionv1.Create, testPod(map[string]string{contract.Inject: "true", contract.Upstreams: "db:abc"})),
			status: 200, message: `consul.hashicorp.com/connect-service-upstreams: "db:abc": port must be a number 1-65535`,
			result: resultDenied, denialKeys: []string{contract.Upstreams}},
		{name: "unknown annotation warned, still injected",
			body:   reviewBody(t, podKind, admissionv1.Create, testPod(map[string]string{contract.Inject: "true", "consul.hashicorp.com/sidecar-proxy-lifecycle": "x"})),
			status: 200, allowed: true, patched: true, warning: "consul.hashicorp.com/sidecar-proxy-lifecycle", result: resultInjected},
		{name: "update passes untouched", body: reviewBody(t, podKind, admissionv1.Update, testPod(inject)),
			status: 200, allowed: true, result: resultSkipped},
		{name: "not a pod passes untouched", body: reviewBody(t, metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}, admissionv1.Create, map[string]any{"kind": "Deployment"}),
			status: 200, allowed: true, result: resultSkipped},
		{name: "pod that does not decode", body: reviewBody(t, podKind, admissionv1.Create, map[string]any{"spec": "x"}),
			status: 200, message: "does not decode", result: resultError},
		{name: "not JSON", body: []byte("{"), status: 400, result: resultError},
		{name: "no request", body: []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), status: 400, result: resultError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, reg := newTestHandler()
			resp, out := post(t, h, tc.body)
			if resp.StatusCode != tc.status {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("HTTP %d (%s), want %d", resp.StatusCode, b, tc.status)
			}
			if got := testutil.ToFloat64(h.Metrics.reviews.WithLabelValues(tc.result)); got != 1 {
				t.Errorf("reviews_total{result=%s} = %v, want 1", tc.result, got)
			}
			if got := testutil.ToFloat64(h.Metrics.foreign); got != tc.foreign {
				t.Errorf("other_injector_pods_total = %v, want %v", got, tc.foreign)
			}
			if n, err := testutil.GatherAndCount(reg, "meshlet_webhook_review_duration_seconds"); err != nil || n != 1 {
				t.Errorf("duration histogram: %d series, %v", n, err)
			}
			for _, k := range tc.denialKeys {
				if got := testutil.ToFloat64(h.Metrics.denials.WithLabelValues(k)); got != 1 {
					t.Errorf("denials_total{annotation=%s} = %v, want 1", k, got)
				}
			}
			if tc.status != 200 {
				return
			}
			r := out.Response
			if r.Allowed != tc.allowed {
				t.Fatalf("allowed = %v, want %v (%+v)", r.Allowed, tc.allowed, r.Result)
			}
			if !tc.allowed {
				if r.Result == nil || r.Result.Code != 400 || !strings.Contains(r.Result.Message, tc.message) {
					t.Fatalf("denial %+v: want code 400 and a message with %q", r.Result, tc.message)
				}
			}
			if (r.Patch != nil) != tc.patched {
				t.Fatalf("patch %s, want patched=%v", r.Patch, tc.patched)
			}
			if tc.patched {
				if r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch {
					t.Fatalf("patch type %v, want JSONPatch", r.PatchType)
				}
				checkInjected(t, tc.body, r.Patch)
				if got := testutil.ToFloat64(h.Metrics.injections); got != 1 {
					t.Errorf("injections_total = %v, want 1", got)
				}
			}
			if tc.warning != "" && (len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], tc.warning)) {
				t.Fatalf("warnings %q, want one naming %s", r.Warnings, tc.warning)
			}
		})
	}
}

// checkInjected applies the patch to the reviewed pod, as the API server
// does, and checks the result carries the sidecar and the status.
func checkInjected(t *testing.T, body, patch []byte) {
	t.Helper()
	var in admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &in); err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("patch does not decode: %v", err)
	}
	out, err := p.Apply(in.Request.Object.Raw)
	if err != nil {
		t.Fatalf("patch does not apply: %v", err)
	}
	var pod corev1.Pod
	if err := json.Unmarshal(out, &pod); err != nil {
		t.Fatal(err)
	}
	if pod.Annotations[contract.InjectStatus] != contract.Injected || len(pod.Spec.InitContainers) != 1 ||
		pod.Spec.InitContainers[0].Name != "consul-sidecar" {
		t.Fatalf("patched pod: annotations %v, init containers %d", pod.Annotations, len(pod.Spec.InitContainers))
	}
}

func TestHandlerRefusesGET(t *testing.T) {
	h, _ := newTestHandler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, PathMutate, nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("GET: HTTP %d, want 405", rec.Code)
	}
}

func TestHandlerBoundsTheBody(t *testing.T) {
	h, _ := newTestHandler()
	big := testPod(map[string]string{contract.Inject: "true", "x": strings.Repeat("a", maxReviewBytes)})
	resp, _ := post(t, h, reviewBody(t, podKind, admissionv1.Create, big))
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a %d-byte review: HTTP %d, want 400", maxReviewBytes, resp.StatusCode)
	}
}
