package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/webhook"
)

// TestMetricsMerging: with the seed's metrics annotations, one scrape of
// <pod>:<prometheus-scrape-port><prometheus-scrape-path> (here /scrape)
// returns the proxy's metrics and the app's (from service-metrics-port and
// service-metrics-path) as one valid Prometheus page; a pod whose app
// serves no metrics there gets the proxy's alone, still valid, and the
// failure counted on the page.
func TestMetricsMerging(t *testing.T) {
	requireDataPlane(t, webhook.DataPlaneMeshlet)
	requireLocalNode(t, "scrapes the pods' IPs from the node, as Prometheus would")
	cs := clientset(t)
	ns := testNamespace(t, cs, "metrics")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The app: busybox httpd serving a metrics page on 9102.
	app := corev1.Container{Name: "app", Image: suite.Images.StaticServer, Command: []string{"/bin/sh", "-c",
		`mkdir -p /tmp/m && printf '# TYPE app_requests_total counter\napp_requests_total{code="200"} 7\n' > /tmp/m/metrics && exec httpd -f -p 9102 -h /tmp/m`},
		Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9102}}}
	ann := func(metricsPort string) map[string]string {
		return map[string]string{contract.Inject: "true", contract.EnableMetrics: "true", contract.EnableMetricsMerging: "true",
			contract.ServiceMetricsPort: metricsPort, contract.ServiceMetricsPath: "/metrics", contract.PrometheusScrapePath: "/scrape"}
	}
	for name, port := range map[string]string{"merged": "9102", "app-silent": "9103"} {
		createPodSpec(t, cs, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann(port)},
			Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1), Containers: []corev1.Container{app}}})
	}
	scrape := func(name string) string {
		t.Helper()
		p := waitPodState(t, ctx, cs, ns, name, "Ready", podReady)
		if got := p.Annotations["prometheus.io/path"]; got != "/scrape" {
			t.Fatalf("pod %s: prometheus.io/path %q, want /scrape", name, got)
		}
		url := "http://" + net.JoinHostPort(p.Status.PodIP, p.Annotations["prometheus.io/port"]) + "/scrape"
		var page string
		waitFor(t, ctx, "a scrape of "+url, func(context.Context) (bool, error) {
			resp, err := http.Get(url)
			if err != nil {
				return false, err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			page = string(b)
			return err == nil && resp.StatusCode == 200, fmt.Errorf("HTTP %d, %v", resp.StatusCode, err)
		})
		var parser expfmt.TextParser
		if _, err := parser.TextToMetricFamilies(strings.NewReader(page)); err != nil {
			t.Fatalf("pod %s: the scraped page is not a valid Prometheus page: %v\n%s", name, err, page)
		}
		return page
	}
	page := scrape("merged")
	for _, want := range []string{`app_requests_total{code="200"} 7`, "meshlet_proxy_connections_total", `meshlet_proxy_metrics_merge_failures_total{reason="unreachable"} 0`} {
		if !strings.Contains(page, want) {
			t.Errorf("merged page lacks %s:\n%s", want, page)
		}
	}
	page = scrape("app-silent")
	if strings.Contains(page, "app_requests_total") || !strings.Contains(page, "meshlet_proxy_connections_total") ||
		!strings.Contains(page, `meshlet_proxy_metrics_merge_failures_total{reason="unreachable"} 1`) {
		t.Errorf("with the app's metrics port closed: want the proxy's metrics alone and the failure counted:\n%s", page)
	}
}
