package e2e

import (
	"context"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// BenchmarkSecureModeLogin: what a sidecar's login costs on the secure
// cluster (SECURE=1), as meshlet-proxy does it: /v1/acl/login to the
// node's Consul client agent over HTTPS with a ServiceAccount token, which
// Consul's Kubernetes auth method checks with the API server's
// TokenReview, then the logout. Reported: login p50/p99 in ms.
func BenchmarkSecureModeLogin(b *testing.B) {
	if !suite.ACLs() {
		b.Skip("needs Consul with ACLs: SECURE=1")
	}
	cs := clientset(b)
	ns := testNamespace(b, cs, "login")
	createServiceAccount(b, cs, ns, "login-bench")
	ctx := context.Background()
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "login-bench",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	cl := consul(b)
	var took []time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		tok, _, err := cl.ACL().Login(&capi.ACLLoginParams{AuthMethod: cluster.AuthMethod, BearerToken: tr.Status.Token,
			Meta: map[string]string{"pod": ns + "/login-bench"}}, nil)
		if err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(t0))
		if _, err := cl.ACL().Logout(&capi.WriteOptions{Token: tok.SecretID}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(percentile(took, 0.5), "login-p50-ms")
	b.ReportMetric(percentile(took, 0.99), "login-p99-ms")
}
