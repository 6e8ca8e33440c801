// Package server serves webhook.Mutate as a Kubernetes mutating admission
// webhook: AdmissionReview over HTTPS, health, readiness and Prometheus
// metrics around the pure function.
package server

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/consulclient"
	"github.com/meshlet/meshlet/webhook"
)

// maxReviewBytes bounds a request body. The API server's own limit on an
// object is 3 MiB; a review carries the object once (oldObject is empty on
// CREATE), plus the envelope.
const maxReviewBytes = 4 << 20

// Handler answers AdmissionReviews for pods.
type Handler struct {
	Config webhook.Config
	// Roots, when set, is the CA bundle the sidecars get (the Consul CA
	// and the Connect CA's roots, kept current) in place of
	// Config.AgentTLS.CAPEM.
	Roots *consulclient.ConnectRoots
	// ConsulDNS, when set, is where Config.ConsulDNS.IP comes from at each
	// admission (the Consul DNS Service's ClusterIP, kept current).
	ConsulDNS interface{ Current() (ip, why string) }
	Log       *slog.Logger
	Metrics   *Metrics // nil: no metrics
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t0 := time.Now()
	if r.Method != http.MethodPost {
		http.Error(w, "admission reviews are POSTed", http.StatusMethodNotAllowed)
		return
	}
	var review admissionv1.AdmissionReview
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReviewBytes))
	if err == nil {
		err = json.Unmarshal(body, &review)
	}
	if err == nil && review.Request == nil {
		err = fmt.Errorf("the AdmissionReview has no request")
	}
	if err != nil {
		h.Metrics.review(resultError, nil, time.Since(t0))
		h.Log.Warn("bad admission request", "remote", r.RemoteAddr, "err", err)
		http.Error(w, "bad AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	resp, result, deniedBy := h.review(review.Request)
	review.Response = resp
	review.Request = nil // the answer carries the response only
	out, err := json.Marshal(&review)
	if err != nil {
		h.Metrics.review(resultError, nil, time.Since(t0))
		http.Error(w, "encode the AdmissionReview: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
	h.Metrics.review(result, deniedBy, time.Since(t0))
}

// Review outcomes, the metrics' result label.
const (
	resultInjected = "injected"
	resultSkipped  = "skipped"
	resultDenied   = "denied"
	resultError    = "error"
)

// review answers one request. Anything that is not the CREATE of a pod is
// admitted untouched: the webhook configuration should not send it, and a
// webhook that blocks what it does not understand locks users out.
func (h *Handler) review(req *admissionv1.AdmissionRequest) (*admissionv1.AdmissionResponse, string, []string) {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Kind.Kind != "Pod" || req.Kind.Group != "" || req.Operation != admissionv1.Create || req.SubResource != "" {
		return resp, resultSkipped, nil
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		resp.Allowed = false
		resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusBadRequest,
			Reason: metav1.StatusReasonBadRequest, Message: "meshlet: the pod does not decode: " + err.Error()}
		return resp, resultError, nil
	}
	log := h.Log.With("namespace", req.Namespace, "pod", podName(&pod, req), "uid", req.UID)
	cfg := h.Config
	if h.Roots != nil {
		cfg.AgentTLS.CAPEM = h.Roots.BundlePEM()
	}
	if h.ConsulDNS != nil {
		cfg.ConsulDNS.IP, cfg.ConsulDNS.Unavailable = h.ConsulDNS.Current()
	}
	res := webhook.Mutate(&pod, req.Namespace, cfg)
	resp.Warnings = res.Warnings
	switch {
	case res.Denied != nil:
		resp.Allowed = false
		resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusBadRequest,
			Reason: metav1.StatusReasonBadRequest, Message: "meshlet: " + res.Denied.Error()}
		by := webhook.DeniedBy(res.Denied)
		log.Info("pod denied", "annotations", by, "reason", res.Denied.Error())
		return resp, resultDenied, by
	case res.Patch == nil && res.Skipped == webhook.SkippedOtherInjector:
		h.Metrics.otherInjector()
		log.Info("pod not injected", "why", res.Skipped)
		return resp, resultSkipped, nil
	case res.Patch == nil:
		log.Debug("pod not injected", "why", res.Skipped)
		return resp, resultSkipped, nil
	}
	patch, err := json.Marshal(res.Patch)
	if err != nil {
		resp.Allowed = false
		resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusInternalServerError,
			Reason: metav1.StatusReasonInternalError, Message: "meshlet: encode the patch: " + err.Error()}
		return resp, resultError, nil
	}
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType = patch, &pt
	log.Info("pod injected", "data_plane", h.Config.DataPlane, "warnings", len(res.Warnings), "dry_run", req.DryRun != nil && *req.DryRun)
	return resp, resultInjected, nil
}

// podName is the pod's name, or its generateName prefix when the API
// server has not named it yet (Deployment pods at admission).
func podName(pod *corev1.Pod, req *admissionv1.AdmissionRequest) string {
	switch {
	case pod.Name != "":
		return pod.Name
	case req.Name != "":
		return req.Name
	}
	return pod.GenerateName + "*"
}
