package server

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/webhook"
)

// The review benchmarks (hack/bench.sh runs both, docs/benchmarks.md has
// their numbers):
//
//	go test ./webhook/server/ -run '^$' -bench 'Review$' -benchmem -benchtime 2500x -count 3
//	go test ./webhook/server/ -run '^$' -bench ReviewHTTPS500 -benchtime 2500x -count 3
//
// BenchmarkReview is the handler alone, in process; BenchmarkReviewHTTPS500
// is the served webhook over HTTPS on loopback at issue 7's 500 reviews/s,
// its server-side p99 against the 2 ms target. Run the second in its own
// process, as above: its tail is the garbage collector's (docs), and after
// BenchmarkReview/envoy/distinct-pods the process keeps ≈ 6 MB of
// rendered bootstraps live, a larger heap than a fresh webhook's, so it
// collects 2.5–3.5× less often and the p99 comes out lower than it is.

// admittedPod is a Deployment's pod as the API server sends it to a
// mutating webhook: named by generateName only, owned by its ReplicaSet,
// defaulted (pull policy, termination message, tolerations, DNS policy…)
// and with the ServiceAccount token volume already added. Its JSON is
// about 2.5 KB, where testPod's is 0.3 KB; decoding it is part of every
// review.
func admittedPod(ann map[string]string) *corev1.Pod {
	p := testPod(ann)
	yes, grace, expiry, prio := true, int64(30), int64(3607), int32(0)
	tolerate := int64(300)
	preempt := corev1.PreemptLowerPriority
	p.Namespace, p.GenerateName = "shop", "web-7c9f8d6b5d-"
	p.Labels = map[string]string{"app": "web", "pod-template-hash": "7c9f8d6b5d"}
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-7c9f8d6b5d",
		UID: "5f0c8a52-1c7e-4b8e-9a51-3a4f1f0e2d11", Controller: &yes, BlockOwnerDeletion: &yes}}
	const token = "kube-api-access-x7k2p"
	c := &p.Spec.Containers[0]
	c.Ports[0].Protocol = corev1.ProtocolTCP
	c.ImagePullPolicy, c.TerminationMessagePath, c.TerminationMessagePolicy = corev1.PullIfNotPresent, "/dev/termination-log", corev1.TerminationMessageReadFile
	c.Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz",
		Port: intstr.FromInt32(8080), Scheme: corev1.URISchemeHTTP}}, PeriodSeconds: 10, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 3}
	c.VolumeMounts = []corev1.VolumeMount{{Name: token, ReadOnly: true, MountPath: "/var/run/secrets/kubernetes.io/serviceaccount"}}
	p.Spec.Volumes = []corev1.Volume{{Name: token, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{ExpirationSeconds: &expiry, Path: "token"}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
				Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace",
				FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
		}}}}}
	p.Spec.RestartPolicy, p.Spec.DNSPolicy, p.Spec.SchedulerName = corev1.RestartPolicyAlways, corev1.DNSClusterFirst, "default-scheduler"
	p.Spec.ServiceAccountName, p.Spec.TerminationGracePeriodSeconds = "default", &grace
	p.Spec.SecurityContext, p.Spec.EnableServiceLinks = &corev1.PodSecurityContext{}, &yes
	p.Spec.Priority, p.Spec.PreemptionPolicy = &prio, &preempt
	p.Spec.Tolerations = []corev1.Toleration{
		{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &tolerate},
		{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &tolerate},
	}
	return p
}

// benchAnnotations are BenchmarkMutate's: injected, one upstream, tags.
func benchAnnotations() map[string]string {
	return map[string]string{contract.Inject: "true", contract.Upstreams: "db:5432", contract.ServiceTags: "v1"}
}

func envoyConfig() webhook.Config {
	c := webhook.DefaultConfig()
	c.DataPlane = webhook.DataPlaneEnvoy
	return c
}

// latencyLog keeps every duration the handler observes into its review
// histogram, exactly (the histogram's buckets are too coarse for a p99):
// the time from ServeHTTP's start to the answer written, what the
// meshlet_webhook_review_duration_seconds series measures.
type latencyLog struct {
	prometheus.Histogram
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencyLog) Observe(s float64) {
	l.mu.Lock()
	if len(l.d) < cap(l.d) { // recording, and never allocating
		l.d = append(l.d, time.Duration(s*1e9))
	}
	l.mu.Unlock()
	l.Histogram.Observe(s)
}

// reset empties the log and records the next n reviews (none before the
// first reset), without allocating while measured.
func (l *latencyLog) reset(n int) {
	l.mu.Lock()
	l.d = make([]time.Duration, 0, n)
	l.mu.Unlock()
}

func (l *latencyLog) take() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.d
	l.d = nil
	return d
}

// benchHandler is the Handler as `meshlet webhook` builds it: a text
// logger at info (one "pod injected" line per review, formatted, here into
// io.Discard rather than stderr) and its metrics, the review histogram
// recorded.
func benchHandler(cfg webhook.Config) (*Handler, *prometheus.Registry, *latencyLog) {
	reg := prometheus.NewRegistry()
	h := &Handler{Config: cfg, Log: slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Metrics: NewMetrics(reg, cfg.DataPlane)}
	lat := &latencyLog{Histogram: h.Metrics.duration}
	h.Metrics.duration = lat
	return h, reg, lat
}

// bodyWriter is a ResponseWriter that keeps the last answer and reuses its
// buffers, so that the in-process benchmark counts the handler's
// allocations, not a recorder's.
type bodyWriter struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (w *bodyWriter) Header() http.Header { return w.header }
func (w *bodyWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}
func (w *bodyWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}
func (w *bodyWriter) reset() {
	clear(w.header)
	w.code = 0
	w.body.Reset()
}

// checkAnswer: HTTP 200 and an AdmissionReview allowing the pod with a
// JSONPatch, for the request's UID.
func checkAnswer(code int, body []byte) error {
	if code != http.StatusOK {
		return fmt.Errorf("HTTP %d: %.200s", code, body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &out); err != nil {
		return fmt.Errorf("answer does not decode: %v", err)
	}
	r := out.Response
	switch {
	case out.Kind != "AdmissionReview" || r == nil || r.UID != "uid-1":
		return fmt.Errorf("answer %s with response %+v: want an AdmissionReview for uid-1", out.Kind, r)
	case !r.Allowed || len(r.Patch) == 0 || r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch:
		return fmt.Errorf("not injected: allowed %v, %d-byte patch, result %+v", r.Allowed, len(r.Patch), r.Result)
	}
	return nil
}

// quickCheck is checkAnswer without decoding, cheap enough for every
// review under load (the answer's fields are compact JSON).
func quickCheck(code int, body []byte) error {
	if code != http.StatusOK {
		return fmt.Errorf("HTTP %d: %.200s", code, body)
	}
	for _, s := range []string{`"uid":"uid-1"`, `"allowed":true`, `"patch":"`, `"patchType":"JSONPatch"`} {
		if !bytes.Contains(body, []byte(s)) {
			return fmt.Errorf("answer without %s: %.300s", s, body)
		}
	}
	return nil
}

// BenchmarkReview: one AdmissionReview through Handler.ServeHTTP, in
// process (no TLS, no HTTP server): decode the review and the pod, Mutate,
// encode the patch and the answer, log, count. The envoy data plane keeps
// rendered bootstraps by their inputs, so repeated reviews of one pod
// (envoy) render the bootstrap once; envoy/distinct-pods cycles through
// 2048 pods of distinct services, more than the cache's 1024, so every
// one of its reviews renders (the first pod of a service, or a cluster
// with more services than the cache holds).
func BenchmarkReview(b *testing.B) {
	one := [][]byte{reviewBody(b, podKind, admissionv1.Create, admittedPod(benchAnnotations()))}
	distinct := make([][]byte, 2048)
	for i := range distinct {
		ann := benchAnnotations()
		ann[contract.Service] = fmt.Sprintf("web-%04d", i)
		distinct[i] = reviewBody(b, podKind, admissionv1.Create, admittedPod(ann))
	}
	for _, c := range []struct {
		name   string
		cfg    webhook.Config
		bodies [][]byte
	}{
		{"consul", testConfig(), one},
		{"envoy", envoyConfig(), one},
		{"envoy/distinct-pods", envoyConfig(), distinct},
	} {
		b.Run(c.name, func(b *testing.B) {
			h, _, _ := benchHandler(c.cfg)
			reqs := make([]*http.Request, len(c.bodies))
			readers := make([]*bytes.Reader, len(c.bodies))
			for i, body := range c.bodies {
				readers[i] = bytes.NewReader(body)
				reqs[i] = httptest.NewRequest(http.MethodPost, PathMutate, nil)
				reqs[i].Body = io.NopCloser(readers[i])
			}
			w := &bodyWriter{header: http.Header{}}
			review := func(i int) {
				i %= len(reqs)
				readers[i].Reset(c.bodies[i])
				w.reset()
				h.ServeHTTP(w, reqs[i])
			}
			review(0)
			if err := checkAnswer(w.code, w.body.Bytes()); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				review(i + 1)
				if w.code != http.StatusOK {
					b.Fatalf("review %d: HTTP %d %s", i, w.code, w.body.Bytes())
				}
			}
			b.StopTimer()
			if err := checkAnswer(w.code, w.body.Bytes()); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(len(c.bodies[0])), "request-bytes")
			b.ReportMetric(float64(w.body.Len()), "answer-bytes")
		})
	}
}

// apiServerClient calls the webhook as kube-apiserver does: client-go's
// transport negotiates HTTP/2 (Server.TLSConfig offers h2 first), so all
// reviews share one TLS connection, multiplexed. A Transport with its own
// TLS config only attempts HTTP/2 when forced.
func apiServerClient(pool *x509.CertPool) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}}
}

func postReview(c *http.Client, url string, body []byte) (*http.Response, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp, out, err
}

// quantile is the q-quantile of sorted d (nearest rank).
func quantile(d []time.Duration, q float64) time.Duration {
	i := int(float64(len(d))*q+0.999999) - 1
	return d[max(0, min(i, len(d)-1))]
}

func µs(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// BenchmarkReviewHTTPS500: the served webhook (Server.Serve, TLS, HTTP/2,
// the mux) on loopback, under an open-loop load of 500 reviews/s: one
// injected pod's review every 2 ms, each sent from its own goroutine at its
// due time, whether or not earlier answers came back, so a slow answer
// does not lower the offered rate (a closed loop would hide the latency
// it causes). b.N is the number of reviews: at -benchtime 2500x each
// sub-benchmark offers 5 s of load, and its p99 is the 25th-slowest
// review.
//
// p50-µs, p99-µs and max-µs are server-side: the handler's own duration of
// each review (what the review histogram observes, recorded exactly). It
// leaves out TLS record decryption, HTTP/2 framing and the flush of the
// answer; client-p99-µs is from the request's send to its answer read and
// includes all of that on both sides, as well as the client's own work,
// which here shares the 2 cores with the server. ns/op is suppressed: it
// would only be the 2 ms pacing.
func BenchmarkReviewHTTPS500(b *testing.B) {
	const rate = 500
	certs := newStaticCert(b)
	body := reviewBody(b, podKind, admissionv1.Create, admittedPod(benchAnnotations()))
	for _, c := range []struct {
		name string
		cfg  webhook.Config
	}{{"consul", testConfig()}, {"envoy", envoyConfig()}} {
		b.Run(c.name, func(b *testing.B) {
			h, reg, lat := benchHandler(c.cfg)
			srv := serveHandler(b, certs, h, reg, 0)
			base := srv.base
			defer func() {
				if err := srv.stop(); err != nil {
					b.Errorf("stop the server: %v", err)
				}
			}()
			client := apiServerClient(certs.pool)
			defer client.CloseIdleConnections()
			url := base + PathMutate

			// Warm up: the TLS handshake, the HTTP/2 connection, the
			// bootstrap cache, the heap. The first answer is checked in full.
			for i := range 200 {
				resp, out, err := postReview(client, url, body)
				if err != nil {
					b.Fatal(err)
				}
				if i == 0 {
					if err := checkAnswer(resp.StatusCode, out); err != nil {
						b.Fatal(err)
					}
					if resp.ProtoMajor != 2 || resp.TLS == nil {
						b.Fatalf("served over %s (TLS %v): want HTTP/2 over TLS, as the API server calls it", resp.Proto, resp.TLS != nil)
					}
				}
			}
			// The handler's own allocations per review, alone (no TLS, no
			// HTTP/2, no client), for comparison with the process-wide count.
			w := &bodyWriter{header: http.Header{}}
			rd := bytes.NewReader(body)
			req := httptest.NewRequest(http.MethodPost, PathMutate, nil)
			req.Body = io.NopCloser(rd)
			handlerAllocs := testing.AllocsPerRun(100, func() {
				rd.Reset(body)
				w.reset()
				h.ServeHTTP(w, req)
			})

			lat.reset(b.N)
			client0 := make([]time.Duration, b.N)
			var failed atomic.Int64
			var firstErr sync.Once
			var wg sync.WaitGroup
			var m0, m1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m0)
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				if d := time.Until(start.Add(time.Duration(i) * time.Second / rate)); d > 0 {
					time.Sleep(d)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					t := time.Now()
					resp, out, err := postReview(client, url, body)
					client0[i] = time.Since(t)
					if err == nil {
						err = quickCheck(resp.StatusCode, out)
					}
					if err != nil {
						failed.Add(1)
						firstErr.Do(func() { b.Errorf("review %d: %v", i, err) })
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			runtime.ReadMemStats(&m1)

			if n := failed.Load(); n > 0 {
				b.Errorf("%d of %d reviews failed", n, b.N)
			}
			server := lat.take()
			if len(server) != b.N {
				b.Fatalf("the handler observed %d reviews, want %d", len(server), b.N)
			}
			slices.Sort(server)
			slices.Sort(client0)
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(µs(quantile(server, .5)), "p50-µs")
			b.ReportMetric(µs(quantile(server, .99)), "p99-µs")
			b.ReportMetric(µs(server[len(server)-1]), "max-µs")
			b.ReportMetric(µs(quantile(client0, .5)), "client-p50-µs")
			b.ReportMetric(µs(quantile(client0, .99)), "client-p99-µs")
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "reviews/s")
			b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/float64(b.N), "allocs/review(client+server)")
			b.ReportMetric(handlerAllocs, "handler-allocs/review")
			b.ReportMetric(float64(m1.NumGC-m0.NumGC)/elapsed.Seconds(), "GCs/s")
		})
	}
}
