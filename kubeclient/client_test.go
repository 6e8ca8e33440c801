package kubeclient

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	authnv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// apiServer answers every request with the JSON of reply(method, path)
// and records what it was asked.
func apiServer(t *testing.T, reply func(method, path string) any) (*Client, *[]string) {
	t.Helper()
	var mu sync.Mutex
	var asked []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.Method+" "+r.URL.Path)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(reply(r.Method, r.URL.Path))
	}))
	t.Cleanup(srv.Close)
	c, err := New(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return c, &asked
}

// Each kind goes to its group's path, and answers decode into its type.
func TestClientPaths(t *testing.T) {
	c, asked := apiServer(t, func(method, path string) any {
		switch {
		case path == "/version":
			return map[string]string{"major": "1", "minor": "34", "gitVersion": "v1.34.4"}
		case strings.HasSuffix(path, "/token"):
			return authnv1.TokenRequest{TypeMeta: metav1.TypeMeta{Kind: "TokenRequest", APIVersion: "authentication.k8s.io/v1"},
				Status: authnv1.TokenRequestStatus{Token: "tok"}}
		case strings.Contains(path, "mutatingwebhookconfigurations"):
			return admissionv1.MutatingWebhookConfiguration{TypeMeta: metav1.TypeMeta{Kind: "MutatingWebhookConfiguration",
				APIVersion: "admissionregistration.k8s.io/v1"}, ObjectMeta: metav1.ObjectMeta{Name: "mwc"}}
		case strings.Contains(path, "/leases/"):
			return coordinationv1.Lease{TypeMeta: metav1.TypeMeta{Kind: "Lease", APIVersion: "coordination.k8s.io/v1"},
				ObjectMeta: metav1.ObjectMeta{Name: "l", Namespace: "meshlet"}}
		case strings.Contains(path, "/events"):
			return corev1.Event{TypeMeta: metav1.TypeMeta{Kind: "Event", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: "e", Namespace: "ns2"}}
		default:
			return corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
				Items: []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "p"}}}}
		}
	})
	ctx := context.Background()
	v, err := c.ServerVersion()
	if err != nil || v.Minor != "34" {
		t.Fatalf("ServerVersion = %+v, %v; want minor 34", v, err)
	}
	tr, err := c.CreateToken(ctx, "meshlet", "meshlet-cni", &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil || tr.Status.Token != "tok" {
		t.Fatalf("CreateToken = %+v, %v; want token tok", tr, err)
	}
	mwc, err := c.MutatingWebhookConfigurations().Get(ctx, "mwc", metav1.GetOptions{})
	if err != nil || mwc.Name != "mwc" {
		t.Fatalf("MutatingWebhookConfigurations().Get = %+v, %v", mwc, err)
	}
	lease, err := c.Leases("meshlet").Get(ctx, "l", metav1.GetOptions{})
	if err != nil || lease.Name != "l" {
		t.Fatalf("Leases.Get = %+v, %v", lease, err)
	}
	pods, err := c.Pods("").List(ctx, metav1.ListOptions{})
	if err != nil || len(pods.Items) != 1 || pods.Items[0].Name != "p" {
		t.Fatalf("Pods.List = %+v, %v", pods, err)
	}
	if _, err := EventSink(c).Create(&corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "e", Namespace: "ns2"}}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"GET /version",
		"POST /api/v1/namespaces/meshlet/serviceaccounts/meshlet-cni/token",
		"GET /apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mwc",
		"GET /apis/coordination.k8s.io/v1/namespaces/meshlet/leases/l",
		"GET /api/v1/pods",
		"POST /api/v1/namespaces/ns2/events",
	}
	if strings.Join(*asked, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant:\n%s", strings.Join(*asked, "\n"), strings.Join(want, "\n"))
	}
}
