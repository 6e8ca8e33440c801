package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	capi "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/e2e/cluster"
	"github.com/meshlet/meshlet/webhook"
)

// TestSecureModeXDS: what the envoy data plane's design (docs/identity.md)
// stands on, checked against the secure cluster's Consul: an xDS client
// presenting what an injected Envoy would (gRPC over TLS to the node's
// client agent on 8503, verified with the CA bundle the chart is given,
// and in the x-consul-token metadata the token of a login with the pod's
// own ServiceAccount, as the sidecars make it) gets its proxy's
// configuration; the same client with the token of another service's
// login is refused.
func TestSecureModeXDS(t *testing.T) {
	requireSecureConsul(t)
	requireLocalNode(t, "dials the Consul agent's gRPC TLS port on the node")
	cs := clientset(t)
	cl := consul(t)
	ns := testNamespace(t, cs, "acl-xds")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, sa := range []string{"xds-web", "xds-other"} {
		createServiceAccount(t, cs, ns, sa)
	}
	web := echoContainer("xds-web", "hello", 8080, 0)
	web.Ports = []corev1.ContainerPort{{ContainerPort: 8080}}
	createPodSpec(t, cs, ns, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "xds-web", Annotations: map[string]string{contract.Inject: "true", contract.Service: "xds-web"}},
		Spec: corev1.PodSpec{ServiceAccountName: "xds-web", TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{web}}})
	waitPodState(t, ctx, cs, ns, "xds-web", "Ready", podReady)
	proxyID := fmt.Sprintf(contract.ProxyIDFormat, ns, "xds-web")

	own := loginAs(t, ctx, cs, cl, ns, "xds-web")
	other := loginAs(t, ctx, cs, cl, ns, "xds-other")
	envoy := envoyImageVersion(t, webhook.DefaultConfig().EnvoyImage)
	n, err := xdsResources(ctx, own, proxyID, "xds-web", envoy)
	if err != nil || n == 0 {
		t.Fatalf("xDS with the pod's own login token: %d resources, %v; want its proxy's configuration", n, err)
	}
	t.Logf("xDS with the pod's own login token: %d clusters", n)
	if n, err := xdsResources(ctx, other, proxyID, "xds-web", envoy); status.Code(err) != codes.PermissionDenied {
		t.Errorf("xDS with another service's login token: %d resources, %v; want PermissionDenied", n, err)
	}
}

// loginAs logs in to the auth method as a sidecar of a pod of
// ServiceAccount sa would, with a token the API server issues for sa, and
// logs out when the test ends.
func loginAs(t *testing.T, ctx context.Context, cs kubernetes.Interface, cl *capi.Client, ns, sa string) string {
	t.Helper()
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa,
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := cl.ACL().Login(&capi.ACLLoginParams{AuthMethod: cluster.AuthMethod, BearerToken: tr.Status.Token,
		Meta: map[string]string{"pod": ns + "/" + sa}}, nil)
	if err != nil {
		t.Fatalf("login as %s: %v", sa, err)
	}
	t.Cleanup(func() { _, _ = cl.ACL().Logout(&capi.WriteOptions{Token: tok.SecretID}) })
	return tok.SecretID
}

// xdsResources opens Envoy's delta ADS stream to the node's client agent
// over TLS as the sidecar proxy proxyID of service, with token in the
// x-consul-token metadata (where Consul's xDS server reads it), subscribes
// to clusters and returns how many the first answer holds.
func xdsResources(ctx context.Context, token, proxyID, service string, envoy *typev3.SemanticVersion) (int, error) {
	pem, err := os.ReadFile(suite.ConsulCAFile)
	if err != nil {
		return 0, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return 0, fmt.Errorf("%s holds no certificate", suite.ConsulCAFile)
	}
	addr := net.JoinHostPort(cluster.NodeIP, strconv.Itoa(cluster.ConsulGRPCTLSPort))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "x-consul-token", token), 20*time.Second)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return 0, err
	}
	node := &corev3.Node{Id: proxyID, Cluster: service, UserAgentName: "envoy",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{
			Version: envoy}}}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: typeCluster}); err != nil {
		return 0, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return 0, err
	}
	return len(resp.GetResources()), nil
}
