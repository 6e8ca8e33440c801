package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/e2e/cluster"
	"github.com/meshlet/meshlet/webhook"
)

// envoyLoginName is data plane envoy's login sidecar (webhook/sidecar_login.go).
const envoyLoginName = "meshlet-login"

// TestSecureModeEnvoyDataPlane: data plane envoy on the secure cluster.
// The release is upgraded to data plane envoy, with a stand-in where the
// Envoy image goes (cluster.EnvoyStandInImage: no Envoy runs here). An
// injected pod gets the login sidecar before Envoy; it logs in with the
// pod's ServiceAccount and writes the token file on the pod's memory
// volume, readable by Envoy's UID alone, and the pod starts. The bootstrap
// Envoy would run with is then rebuilt from exactly what Envoy gets, its
// args from the pod and the file from the node's memory volume, merged as
// Envoy merges them, and checked against Envoy's schema; a client
// presenting it (TLS to 8503 verified with its inline CA, the token in its
// metadata, its node) gets the proxy's clusters from Consul's xDS. When
// the pod goes its token goes; a refused login is an Event.
func TestSecureModeEnvoyDataPlane(t *testing.T) {
	requireSecureConsul(t)
	requireLocalNode(t, "helm-upgrades the local release to data plane envoy and reads the pod's memory volume on the node")
	cs := clientset(t)
	cl := consul(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	upgradeRelease(t, ctx, cs, "connectInject.dataPlane=envoy", "global.imageEnvoy="+cluster.EnvoyStandInImage)
	ns := testNamespace(t, cs, "acl-envoy")
	createServiceAccount(t, cs, ns, "edp-web")
	web := echoContainer("edp-web", "hello", 8080, 0)
	web.Ports = []corev1.ContainerPort{{ContainerPort: 8080}}
	created := createPodSpec(t, cs, ns, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "edp-web", Annotations: map[string]string{contract.Inject: "true", contract.Service: "edp-web"}},
		Spec: corev1.PodSpec{ServiceAccountName: "edp-web", TerminationGracePeriodSeconds: ptr.To[int64](5),
			Containers: []corev1.Container{web}}})
	if ic := created.Spec.InitContainers; len(ic) < 2 || ic[0].Name != envoyLoginName || ic[1].Name != sidecarNames[webhook.DataPlaneEnvoy] {
		t.Fatalf("initContainers %v: want %s, then %s", containerNames(ic), envoyLoginName, sidecarNames[webhook.DataPlaneEnvoy])
	}
	pod := waitPodState(t, ctx, cs, ns, "edp-web", "Ready", podReady)

	file := filepath.Join(lc.KubeletDir(), "pods", string(pod.UID), "volumes", "kubernetes.io~empty-dir", "meshlet-consul-login",
		filepath.Base(contract.EnvoyADSFile))
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatalf("the token file on the pod's memory volume: %v", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || fi.Mode().Perm() != 0o400 || st.Uid != contract.ProxyUID {
		t.Errorf("the token file is mode %v, owner %v: want 0400, UID %d (Envoy's alone)", fi.Mode().Perm(), fi.Sys(), contract.ProxyUID)
	}
	bs := envoyBootstrapOf(t, pod, file)
	toks, err := cluster.PodLoginTokens(cl, ns)
	if err != nil {
		t.Fatal(err)
	}
	lt, ok := toks["edp-web"]
	if !ok || lt.UID != string(pod.UID) || len(lt.Services) != 1 || lt.Services[0] != "edp-web" {
		t.Fatalf("the pod's login token: %+v (%v); want one of its UID with the service identity edp-web alone", lt, ok)
	}
	tok, _, err := cl.ACL().TokenRead(lt.Accessor, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := bootstrapToken(bs); got != tok.SecretID {
		t.Fatal("the token Envoy would send is not the pod's login token")
	}
	n, err := xdsWithBootstrap(ctx, bs, envoyImageVersion(t, webhook.DefaultConfig().EnvoyImage))
	if err != nil || n == 0 {
		t.Fatalf("xDS as the pod's bootstrap says: %d clusters, %v; want its proxy's configuration", n, err)
	}
	t.Logf("xDS as the pod's bootstrap says (TLS to %s, the login's token): %d clusters", xdsAddress(bs), n)

	if err := cs.CoreV1().Pods(ns).Delete(ctx, "edp-web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the pod gone, and its token with it", func(ctx context.Context) (bool, error) {
		err := tokensMatchPods(ctx, cs, cl, ns)
		left, lerr := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && lerr == nil && len(left.Items) == 0, errors.Join(err, lerr)
	})
	// The login sidecar's refused login is an Event too.
	checkFailedLogin(t, cs, cl, ns, "edp-nobind")
}

// envoyBootstrapOf is the bootstrap the pod's Envoy runs with: the file
// its -c names (read from the node, at file), with its --config-yaml,
// expanded as kubelet does, merged into it as Envoy merges them, and held
// to Envoy's schema.
func envoyBootstrapOf(t *testing.T, pod *corev1.Pod, file string) *bootstrapv3.Bootstrap {
	t.Helper()
	var envoy *corev1.Container
	for i, c := range pod.Spec.InitContainers {
		if c.Name == sidecarNames[webhook.DataPlaneEnvoy] {
			envoy = &pod.Spec.InitContainers[i]
		}
	}
	if envoy == nil || len(envoy.Args) < 4 || envoy.Args[0] != "-c" || envoy.Args[1] != contract.EnvoyADSFile || envoy.Args[2] != "--config-yaml" {
		t.Fatalf("Envoy's args %q: want -c %s --config-yaml <bootstrap> first", envoy.Args, contract.EnvoyADSFile)
	}
	js, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var bs bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &bs); err != nil {
		t.Fatalf("the token file is not an Envoy bootstrap: %v", err)
	}
	expanded := strings.NewReplacer("$("+contract.EnvProxyID+")", fmt.Sprintf(contract.ProxyIDFormat, pod.Namespace, pod.Name),
		"$("+contract.EnvHostIP+")", pod.Status.HostIP).Replace(envoy.Args[3])
	yj, err := yaml.YAMLToJSON([]byte(expanded))
	if err != nil {
		t.Fatal(err)
	}
	var inline bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(yj, &inline); err != nil {
		t.Fatalf("--config-yaml is not an Envoy bootstrap: %v", err)
	}
	proto.Merge(&bs, &inline)
	if err := bs.ValidateAll(); err != nil {
		t.Fatalf("the merged bootstrap breaks Envoy's rules: %v", err)
	}
	if n := len(bs.GetDynamicResources().GetAdsConfig().GetGrpcServices()); n != 1 {
		t.Fatalf("the merged bootstrap has %d ADS gRPC services, want 1", n)
	}
	return &bs
}

func bootstrapToken(bs *bootstrapv3.Bootstrap) string {
	for _, h := range bs.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetInitialMetadata() {
		if h.GetKey() == contract.ConsulTokenHeader {
			return h.GetValue()
		}
	}
	return ""
}

func xdsAddress(bs *bootstrapv3.Bootstrap) string {
	sa := bs.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
}

// xdsWithBootstrap opens the delta ADS stream as Envoy would with bs: to
// the Consul agent's cluster address, over TLS verified as Envoy verifies
// it (the chain against the inline CA; the name only when the bootstrap
// asks for one), with the gRPC service's metadata and bs's node; it returns
// how many clusters the first answer holds.
func xdsWithBootstrap(ctx context.Context, bs *bootstrapv3.Bootstrap, envoy *typev3.SemanticVersion) (int, error) {
	c := bs.GetStaticResources().GetClusters()[0]
	var utls tlsv3.UpstreamTlsContext
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&utls); err != nil {
		return 0, fmt.Errorf("the Consul agent's cluster has no TLS: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(utls.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetInlineString())) {
		return 0, errors.New("the bootstrap's trusted_ca holds no certificate")
	}
	tc := &tls.Config{ServerName: utls.GetSni(), InsecureSkipVerify: true, // verified below, as Envoy does
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			certs := make([]*x509.Certificate, len(raw))
			for i, r := range raw {
				var err error
				if certs[i], err = x509.ParseCertificate(r); err != nil {
					return err
				}
			}
			inter := x509.NewCertPool()
			for _, ic := range certs[1:] {
				inter.AddCert(ic)
			}
			opts := x509.VerifyOptions{Roots: pool, Intermediates: inter}
			for _, m := range utls.GetCommonTlsContext().GetValidationContext().GetMatchTypedSubjectAltNames() {
				opts.DNSName = m.GetMatcher().GetExact()
			}
			_, err := certs[0].Verify(opts)
			return err
		}}
	conn, err := grpc.NewClient(xdsAddress(bs), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	var md []string
	for _, h := range bs.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetInitialMetadata() {
		md = append(md, h.GetKey(), h.GetValue())
	}
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, md...), 20*time.Second)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return 0, err
	}
	node := proto.Clone(bs.GetNode()).(*corev3.Node)
	node.UserAgentName = "envoy"
	node.UserAgentVersionType = &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{Version: envoy}}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: typeCluster}); err != nil {
		return 0, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return 0, err
	}
	return len(resp.GetResources()), nil
}
