package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/e2e/cluster"
	"github.com/meshlet/meshlet/webhook"
)

// TestEnvoyMetricsMerging: metrics merging with data plane envoy. The
// release is upgraded to data plane envoy, with the Envoy stand-in
// (cluster.EnvoyStandInImage: no Envoy runs here) whose admin listener on
// the pod's loopback serves a page Envoy wrote
// (dataplane/testdata/envoy-stats-prometheus.txt, recorded). A pod with
// merging on gets the meshlet-metrics sidecar after Envoy, and one scrape
// of <pod IP>:<prometheus.io/port><prometheus.io/path>, from the node as
// Prometheus would, returns every one of Envoy's families as Envoy wrote
// them and the app's, as one page Prometheus' parser takes; the app's
// family named like one of Envoy's is left out and counted. A pod whose
// app serves no metrics (its port closed) gets Envoy's page alone, the
// failure counted on it; its scrape port and path are not the defaults.
// A pod with metrics on and merging off gets Envoy's page alone.
func TestEnvoyMetricsMerging(t *testing.T) {
	requireLocalNode(t, "helm-upgrades the local release to data plane envoy with the Envoy stand-in, and scrapes the pods' IPs from the node")
	recorded, err := os.ReadFile(filepath.Join(root, "dataplane", "testdata", "envoy-stats-prometheus.txt"))
	if err != nil {
		t.Fatal(err)
	}
	envoy := parseExposition(t, "the recorded Envoy page", string(recorded))
	cs := clientset(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	upgradeRelease(t, ctx, cs, "connectInject.dataPlane=envoy", "global.imageEnvoy="+cluster.EnvoyStandInImage)
	ns := testNamespace(t, cs, "envoy-metrics")

	// The app: busybox httpd serving a metrics page on 9102, one of whose
	// families Envoy's page has too.
	app := corev1.Container{Name: "app", Image: suite.Images.StaticServer, ImagePullPolicy: pullPolicy(),
		Command: []string{"/bin/sh", "-c", `mkdir -p /tmp/m && printf '` +
			`# TYPE app_requests_total counter\napp_requests_total{code="200"} 7\n` +
			`# TYPE app_queue_depth gauge\napp_queue_depth 3\n` +
			`# TYPE envoy_server_live gauge\nenvoy_server_live 0\n' > /tmp/m/metrics && exec httpd -f -p 9102 -h /tmp/m`},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 9102}}}
	pods := map[string]map[string]string{
		"merged": {contract.ServiceMetricsPort: "9102", contract.PrometheusScrapePath: "/scrape"},
		"app-silent": {contract.ServiceMetricsPort: "9103", contract.PrometheusScrapePort: "20222",
			contract.PrometheusScrapePath: "/stats/merged"},
		"envoy-only": {contract.ServiceMetricsPort: "9102", contract.EnableMetricsMerging: "false", contract.PrometheusScrapePath: "/metrics"},
	}
	for name, ann := range pods {
		ann[contract.Inject], ann[contract.EnableMetrics] = "true", "true"
		if _, ok := ann[contract.EnableMetricsMerging]; !ok {
			ann[contract.EnableMetricsMerging] = "true"
		}
		created := createPodSpec(t, cs, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann},
			Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1), Containers: []corev1.Container{app}}})
		ic := created.Spec.InitContainers
		if want := []string{sidecarNames[webhook.DataPlaneEnvoy], contract.EnvoyMetricsSidecarName}; !slices.Equal(containerNames(ic), want) {
			t.Fatalf("pod %s: initContainers %v, want %v", name, containerNames(ic), want)
		}
		if sc := ic[1].SecurityContext; sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != contract.ProxyUID {
			t.Errorf("pod %s: %s's security context %+v: want UID %d", name, ic[1].Name, sc, contract.ProxyUID)
		}
	}

	// scrape scrapes pod name's merged port until the page, valid, has
	// want (the app's httpd may start after the merger's first scrapes).
	scrape := func(name, want string) map[string]*dto.MetricFamily {
		t.Helper()
		p := waitPodState(t, ctx, cs, ns, name, "Ready", podReady)
		port, path := p.Annotations["prometheus.io/port"], p.Annotations["prometheus.io/path"]
		if wantPort := pods[name][contract.PrometheusScrapePort]; (wantPort == "" && port != "20200") || (wantPort != "" && port != wantPort) ||
			path != pods[name][contract.PrometheusScrapePath] || p.Annotations["prometheus.io/scrape"] != "true" {
			t.Fatalf("pod %s: prometheus.io/* %q, %q, %q: want the scrape port and path of its annotations", name,
				p.Annotations["prometheus.io/scrape"], port, path)
		}
		url := "http://" + net.JoinHostPort(p.Status.PodIP, port) + path
		var page string
		waitFor(t, ctx, "a scrape of "+url, func(ctx context.Context) (bool, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return false, err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return false, err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			page = string(b)
			return err == nil && resp.StatusCode == http.StatusOK && strings.Contains(page, want),
				fmt.Errorf("HTTP %d, %v, %s missing: %.300s", resp.StatusCode, err, want, page)
		})
		got := parseExposition(t, "pod "+name+"'s scrape", page)
		t.Logf("pod %s: %s: a valid page of %d families, %d bytes", name, url, len(got), len(page))
		for fam, want := range envoy {
			if !proto.Equal(got[fam], want) {
				t.Errorf("pod %s: Envoy's family %s on the scraped page:\n%v\nwant, as Envoy wrote it:\n%v", name, fam, got[fam], want)
			}
		}
		return got
	}

	got := scrape("merged", "app_requests_total")
	if v := gaugeOrCounter(got["app_requests_total"], "code", "200"); v != 7 {
		t.Errorf("merged: app_requests_total{code=\"200\"} = %v, want the app's 7", v)
	}
	if v := gaugeOrCounter(got["app_queue_depth"], "", ""); v != 3 {
		t.Errorf("merged: app_queue_depth = %v, want the app's 3", v)
	}
	if v := gaugeOrCounter(got["meshlet_proxy_metrics_merge_failures_total"], "reason", "conflict"); v < 1 {
		t.Errorf("merged: the app's envoy_server_live, left out, is not counted: conflict = %v", v)
	}
	if v := gaugeOrCounter(got["envoy_server_live"], "", ""); v != 1 {
		t.Errorf("merged: envoy_server_live = %v, want Envoy's 1, not the app's 0", v)
	}

	got = scrape("app-silent", `meshlet_proxy_metrics_merge_failures_total{reason="unreachable"}`)
	for _, fam := range []string{"app_requests_total", "app_queue_depth"} {
		if got[fam] != nil {
			t.Errorf("app-silent: the page has %s, whose app page is on a closed port", fam)
		}
	}
	if v := gaugeOrCounter(got["meshlet_proxy_metrics_merge_failures_total"], "reason", "unreachable"); v < 1 {
		t.Errorf("app-silent: unreachable = %v: the closed app page is not counted", v)
	}
	if n := len(got); n != len(envoy)+1 {
		t.Errorf("app-silent: %d families on the page, want Envoy's %d and the merger's counter", n, len(envoy))
	}

	// Merging off: Envoy's page, the app's (serving) not fetched.
	got = scrape("envoy-only", "envoy_server_live")
	if got["app_requests_total"] != nil {
		t.Error("envoy-only: the app's page was merged with merging off")
	}
	if n := len(got); n != len(envoy)+1 {
		t.Errorf("envoy-only: %d families on the page, want Envoy's %d and the merger's counter", n, len(envoy))
	}
}

// parseExposition parses a Prometheus text page, failing t when the
// parser refuses it.
func parseExposition(t *testing.T, what, page string) map[string]*dto.MetricFamily {
	t.Helper()
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(strings.NewReader(page))
	if err != nil {
		t.Fatalf("%s is not a valid Prometheus page: %v\n%s", what, err, page)
	}
	return fams
}

// gaugeOrCounter is the value of f's sample whose label name is value (no
// label: name ""), -1 when there is none.
func gaugeOrCounter(f *dto.MetricFamily, name, value string) float64 {
	for _, m := range f.GetMetric() {
		match := name == "" && len(m.GetLabel()) == 0
		for _, l := range m.GetLabel() {
			match = match || (l.GetName() == name && l.GetValue() == value)
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Untyped != nil:
			return m.GetUntyped().GetValue()
		}
	}
	return -1
}
