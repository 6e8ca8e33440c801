package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3" // typed config in the bootstrap
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3" // typed config in the bootstrap
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	capi "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/webhook"
)

// TestXDSServesMeshletRegistrations proves the Envoy path without Envoy:
// for meshlet's registrations of two pods, static-client → static-server,
// Consul's own xDS server (the node's client agent, plain gRPC on 8502, no
// ACLs in the local cluster) serves an xDS client that presents itself as
// the Envoy the webhook's bootstrap would start (its node id, cluster and
// metadata, the Consul agent address, the delta ADS protocol, all read from the
// rendered bootstrap) the listeners and clusters a transparent-proxy
// sidecar needs: public_listener on the pod IP:20000, outbound_listener on
// 15001 with a filter chain for the upstream's Service ClusterIP, and the
// upstream's cluster whose endpoint is the server pod's IP:20000.
//
// The pods are real: created through the API server, injected by the
// cluster's webhook, given their IPs by the CNI chain, Ready by kubelet and
// registered by the node agent (register.For), so the registrations carry
// a real IP, real Service ClusterIPs and a real readiness. Envoy cannot run
// here, so the cluster's webhook injects data plane consul; the Envoy
// bootstrap is the one the webhook renders with data plane envoy for the
// same pod (webhook.Mutate), and the test checks that the registration
// annotation it writes for that pod is the live pod's apart from the data
// plane, which register.For does not read. What the xDS server serves
// depends only on the registrations and the xDS client's node, so this is
// what Envoy would receive.
func TestXDSServesMeshletRegistrations(t *testing.T) {
	requireLocalNode(t, "dials the node's Consul gRPC port at the node's IP from the test's host")
	cs := clientset(t)
	ns := testNamespace(t, cs, "xds")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := consul(t)
	// Consul service names are global to the datacenter: the namespace's
	// random suffix keeps them apart from other tests'.
	suffix := strings.TrimPrefix(ns, "xds-")
	server, client := "static-server-"+suffix, "static-client-"+suffix

	// Real Services, so the upstream's virtual address is a real ClusterIP.
	serverSvc := createXDSService(t, cs, ns, server, 8080)
	createXDSService(t, cs, ns, client, 80)

	// The cluster's default intention policy is allow (ACLs are off), so
	// static-client may reach static-server without an intention, and in
	// transparent proxy mode every service is then an upstream of it. The
	// intention makes both explicit, as they must be under default deny.
	intention := &capi.ServiceIntentionsConfigEntry{Kind: capi.ServiceIntentions, Name: server,
		Sources: []*capi.SourceIntention{{Name: client, Action: capi.IntentionActionAllow}}}
	if _, _, err := cl.ConfigEntries().Set(intention, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = cl.ConfigEntries().Delete(capi.ServiceIntentions, server, nil) })

	app := echoContainer("app", "hello from "+server, 8080, 0)
	app.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	cli := shellContainer()
	submitted := map[string]*corev1.Pod{server: xdsPod(server, app), client: xdsPod(client, cli)}
	for _, p := range submitted {
		createPodSpec(t, cs, ns, p)
	}
	live := map[string]*corev1.Pod{}
	for _, name := range []string{server, client} {
		live[name] = meshPodRegistered(t, ctx, cs, cl, ns, name)
	}

	cfg := webhook.DefaultConfig()
	cfg.DataPlane, cfg.TransparentProxy = webhook.DataPlaneEnvoy, true
	envoyVersion := envoyImageVersion(t, cfg.EnvoyImage)
	dc, trustDomain := consulDatacenter(t, cl), consulTrustDomain(t, cl)

	// The server's proxy: its inbound side.
	t0 := time.Now()
	srvPod := live[server]
	srvBoot := envoyBootstrapFor(t, submitted[server], srvPod, cfg)
	checkBootstrapNode(t, cl, srvBoot, srvPod, server)
	srv := fetchXDS(t, ctx, srvBoot, envoyVersion, func(x *xdsConfig) bool {
		return x.listenerNamed("public_listener:") != nil && x.clusters["local_app"] != nil
	})
	t.Logf("server proxy: xDS in %s: %s", time.Since(t0).Round(time.Millisecond), srv)
	checkPublicListener(t, srv, srvPod)
	localApp := srv.clusters["local_app"]
	if got := clusterEndpoints(localApp.GetLoadAssignment()); !slices.Equal(got, []string{"127.0.0.1:8080"}) {
		t.Errorf("server proxy's local_app cluster endpoints %v: want the app on 127.0.0.1:8080", got)
	}

	// The client's proxy: its outbound side, in transparent proxy mode.
	t0 = time.Now()
	cliPod := live[client]
	cliBoot := envoyBootstrapFor(t, submitted[client], cliPod, cfg)
	checkBootstrapNode(t, cl, cliBoot, cliPod, client)
	virtual := serverSvc.Spec.ClusterIP
	upstream := fmt.Sprintf("%s.default.%s.internal.%s", server, dc, trustDomain)
	out := fetchXDS(t, ctx, cliBoot, envoyVersion, func(x *xdsConfig) bool {
		l := x.listenerNamed("outbound_listener:")
		if l == nil || x.listenerNamed("public_listener:") == nil {
			return false
		}
		fc := chainForPrefix(l, virtual)
		return fc != nil && len(clusterEndpoints(x.endpoints[edsName(x.clusters[tcpProxyCluster(t, fc)])])) > 0
	})
	t.Logf("client proxy: xDS in %s: %s", time.Since(t0).Round(time.Millisecond), out)
	checkPublicListener(t, out, cliPod)

	ol := out.listenerNamed("outbound_listener:")
	if a := ol.GetAddress().GetSocketAddress(); a.GetAddress() != "127.0.0.1" || a.GetPortValue() != contract.ProxyOutboundPort {
		t.Errorf("outbound_listener on %s:%d: want 127.0.0.1:%d, where meshlet-cni redirects outbound traffic",
			a.GetAddress(), a.GetPortValue(), contract.ProxyOutboundPort)
	}
	if !hasOriginalDst(ol) {
		t.Errorf("outbound_listener has no original_dst listener filter: redirected connections would not keep their destination")
	}
	fc := chainForPrefix(ol, virtual)
	if fc == nil {
		t.Fatalf("outbound_listener has no filter chain matching %s/32, the ClusterIP of Service %s", virtual, server)
	}
	target := tcpProxyCluster(t, fc)
	if target != upstream {
		t.Errorf("the filter chain for %s/32 proxies to cluster %q: want %q", virtual, target, upstream)
	}
	up := out.clusters[target]
	if up == nil {
		t.Fatalf("no cluster %q, which the outbound filter chain for %s proxies to", target, virtual)
	}
	if up.GetType() != clusterv3.Cluster_EDS {
		t.Errorf("cluster %s has discovery type %v: want EDS", target, up.GetType())
	}
	var utls tlsv3.UpstreamTlsContext
	if err := up.GetTransportSocket().GetTypedConfig().UnmarshalTo(&utls); err != nil {
		t.Errorf("cluster %s: transport socket is not an UpstreamTlsContext: %v", target, err)
	} else {
		if utls.GetSni() != upstream {
			t.Errorf("cluster %s dials with SNI %q: want %q", target, utls.GetSni(), upstream)
		}
		id := fmt.Sprintf("spiffe://%s/ns/default/dc/%s/svc/%s", trustDomain, dc, server)
		if !verifiesURISAN(utls.GetCommonTlsContext().GetValidationContext(), id) {
			t.Errorf("cluster %s does not verify the server's identity %s: %v", target, id, utls.GetCommonTlsContext().GetValidationContext().GetMatchTypedSubjectAltNames())
		}
	}
	want := []string{net.JoinHostPort(srvPod.Status.PodIP, strconv.Itoa(contract.ProxyInboundPort))}
	cla := out.endpoints[edsName(up)]
	if got := clusterEndpoints(cla); !slices.Equal(got, want) {
		t.Errorf("cluster %s endpoints (EDS) %v: want the server pod's IP and inbound port %v", target, got, want)
	}
	for _, e := range cla.GetEndpoints() {
		for _, lb := range e.GetLbEndpoints() {
			if s := lb.GetHealthStatus(); s != corev3.HealthStatus_HEALTHY {
				t.Errorf("endpoint %s is %v: want HEALTHY, the server pod is Ready", lb.GetEndpoint().GetAddress().GetSocketAddress().GetAddress(), s)
			}
		}
	}
}

// meshPodRegistered is the registration step: it waits for the node agent
// (the meshlet agent DaemonSet) to hold the pod's service and sidecar
// proxy, register.For's registrations for the pod and its namespace's
// Services, with the readiness check passing once the pod is Ready, and
// returns the Ready pod. The node agent deregisters them when the pod goes.
func meshPodRegistered(t *testing.T, ctx context.Context, cs *kubernetes.Clientset, cl *capi.Client, ns, name string) *corev1.Pod {
	t.Helper()
	ready := waitPodState(t, ctx, cs, ns, name, "Ready", podReady)
	waitFor(t, ctx, "the agent's registration of "+name, func(context.Context) (bool, error) {
		if err := catalogMatches(cl, ns, name, map[string]string{name: ready.Status.PodIP}); err != nil {
			return false, err
		}
		if s, err := checkStatus(cl, ns, name); s != capi.HealthPassing {
			return false, fmt.Errorf("readiness check %q (%v)", s, err)
		}
		return true, nil
	})
	return ready
}

func xdsPod(name string, app corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}, Annotations: map[string]string{
			contract.Inject: "true", contract.TransparentProxy: "true"}},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1), Containers: []corev1.Container{app}},
	}
}

func createXDSService(t *testing.T, cs *kubernetes.Clientset, ns, name string, target int) *corev1.Service {
	t.Helper()
	svc, err := cs.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt(target)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if net.ParseIP(svc.Spec.ClusterIP) == nil {
		t.Fatalf("Service %s has ClusterIP %q", name, svc.Spec.ClusterIP)
	}
	return svc
}

// envoyBootstrapFor is the bootstrap Envoy would start with in submitted,
// had the webhook injected it with cfg (data plane envoy): the webhook's
// patch applied, the sidecar's --config-yaml expanded the way kubelet
// expands it from the sidecar's env for the live pod, parsed as Envoy
// parses it. It also checks that the webhook's registration annotation for
// that pod is the live pod's, apart from the data plane.
func envoyBootstrapFor(t *testing.T, submitted, live *corev1.Pod, cfg webhook.Config) *bootstrapv3.Bootstrap {
	t.Helper()
	pod := submitted.DeepCopy()
	pod.Namespace = live.Namespace
	res := webhook.Mutate(pod, live.Namespace, cfg)
	if res.Denied != nil || res.Patch == nil {
		t.Fatalf("webhook.Mutate with data plane envoy: denied %v, skipped %q", res.Denied, res.Skipped)
	}
	injected := applyPatch(t, pod, res)

	envoyReg, err := contract.DecodeRegistration(injected.Annotations[contract.RegistrationKey])
	if err != nil {
		t.Fatal(err)
	}
	liveReg, err := contract.DecodeRegistration(live.Annotations[contract.RegistrationKey])
	if err != nil {
		t.Fatal(err)
	}
	if envoyReg.DataPlane != webhook.DataPlaneEnvoy || !envoyReg.TransparentProxy {
		t.Fatalf("registration of the envoy pod %+v: want data plane envoy, transparent proxy", envoyReg)
	}
	envoyReg.DataPlane = liveReg.DataPlane
	if !reflect.DeepEqual(envoyReg, liveReg) {
		t.Fatalf("the webhook's registration of %s with data plane envoy %+v differs from the live pod's %+v beyond the data plane", pod.Name, envoyReg, liveReg)
	}

	var sidecar *corev1.Container
	for _, c := range append(injected.Spec.InitContainers, injected.Spec.Containers...) {
		if len(c.Command) == 1 && c.Command[0] == "envoy" {
			sidecar = &c
		}
	}
	if sidecar == nil {
		t.Fatalf("no envoy container in the injected pod")
	}
	env := map[string]string{}
	for _, e := range sidecar.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = kubeletExpand(e.Value, env)
		case e.ValueFrom.FieldRef != nil:
			env[e.Name] = podField(t, live, e.ValueFrom.FieldRef.FieldPath)
		default:
			t.Fatalf("sidecar env %s: a source this test does not resolve", e.Name)
		}
	}
	i := slices.Index(sidecar.Args, "--config-yaml")
	if i < 0 || i+1 == len(sidecar.Args) {
		t.Fatalf("envoy args %q: no --config-yaml", sidecar.Args)
	}
	js, err := yaml.YAMLToJSON([]byte(kubeletExpand(sidecar.Args[i+1], env)))
	if err != nil {
		t.Fatal(err)
	}
	var bs bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &bs); err != nil {
		t.Fatalf("the expanded bootstrap: %v", err)
	}
	if err := bs.ValidateAll(); err != nil {
		t.Fatalf("the expanded bootstrap: %v", err)
	}
	return &bs
}

func applyPatch(t *testing.T, pod *corev1.Pod, res webhook.Result) *corev1.Pod {
	t.Helper()
	doc, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := json.Marshal(res.Patch)
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(ops)
	if err != nil {
		t.Fatal(err)
	}
	if doc, err = p.Apply(doc); err != nil {
		t.Fatal(err)
	}
	var out corev1.Pod
	if err := json.Unmarshal(doc, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

var kubeletVarRef = regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// kubeletExpand expands $(VAR) from env as kubelet does: an unknown VAR
// stays as it is, $$ is $.
func kubeletExpand(s string, env map[string]string) string {
	return kubeletVarRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		if v, ok := env[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

func podField(t *testing.T, pod *corev1.Pod, path string) string {
	t.Helper()
	switch path {
	case "metadata.name":
		return pod.Name
	case "metadata.namespace":
		return pod.Namespace
	case "metadata.uid":
		return string(pod.UID)
	case "status.hostIP":
		return pod.Status.HostIP
	case "status.podIP":
		return pod.Status.PodIP
	}
	t.Fatalf("downward API field %s: not resolved by this test", path)
	return ""
}

// checkBootstrapNode: the node the bootstrap names is the proxy the Consul agent
// holds for the pod (Consul finds the proxy by node.id alone), and cluster
// and metadata are what Consul expects of a sidecar of service.
func checkBootstrapNode(t *testing.T, cl *capi.Client, bs *bootstrapv3.Bootstrap, pod *corev1.Pod, service string) {
	t.Helper()
	n := bs.GetNode()
	if want := contract.ProxyID(pod.Namespace, pod.Name); n.GetId() != want {
		t.Errorf("bootstrap node.id %q: want %q", n.GetId(), want)
	}
	svc, _, err := cl.Agent().Service(n.GetId(), nil)
	if err != nil {
		t.Fatalf("the agent has no service %q, the bootstrap's node.id: %v", n.GetId(), err)
	}
	if svc.Kind != capi.ServiceKindConnectProxy || svc.Proxy.DestinationServiceName != service || svc.Address != pod.Status.PodIP {
		t.Errorf("the agent's %s: kind %q, destination %q, address %s: want a connect-proxy for %s on %s",
			n.GetId(), svc.Kind, svc.Proxy.DestinationServiceName, svc.Address, service, pod.Status.PodIP)
	}
	if n.GetCluster() != service {
		t.Errorf("bootstrap node.cluster %q: want %q", n.GetCluster(), service)
	}
	for _, k := range []string{"namespace", "partition"} {
		if v := n.GetMetadata().GetFields()[k].GetStringValue(); v != "default" {
			t.Errorf("bootstrap node.metadata.%s %q: want default", k, v)
		}
	}
}

// xdsConfig is what an xDS client holds after the server's responses.
type xdsConfig struct {
	listeners map[string]*listenerv3.Listener
	clusters  map[string]*clusterv3.Cluster
	endpoints map[string]*endpointv3.ClusterLoadAssignment // by cluster_name
}

func (x *xdsConfig) String() string {
	names := func(m []string) string { slices.Sort(m); return strings.Join(m, ", ") }
	var l, c, e []string
	for n, ln := range x.listeners {
		var chains []string
		for _, fc := range ln.GetFilterChains() {
			var prefixes []string
			for _, r := range fc.GetFilterChainMatch().GetPrefixRanges() {
				prefixes = append(prefixes, fmt.Sprintf("%s/%d", r.GetAddressPrefix(), r.GetPrefixLen().GetValue()))
			}
			if len(prefixes) > 0 {
				chains = append(chains, strings.Join(prefixes, " "))
			}
		}
		if len(chains) > 0 {
			n += fmt.Sprintf(" (chains for %s)", strings.Join(chains, "; "))
		}
		l = append(l, n)
	}
	for n := range x.clusters {
		c = append(c, n)
	}
	for n, cla := range x.endpoints {
		e = append(e, fmt.Sprintf("%s %v", n, clusterEndpoints(cla)))
	}
	return fmt.Sprintf("listeners [%s]; clusters [%s]; endpoints [%s]", names(l), names(c), names(e))
}

// listenerNamed is the one listener whose name starts with prefix (Consul
// names them <kind>:<address>:<port>).
func (x *xdsConfig) listenerNamed(prefix string) *listenerv3.Listener {
	var found *listenerv3.Listener
	for n, l := range x.listeners {
		if strings.HasPrefix(n, prefix) {
			if found != nil {
				return nil
			}
			found = l
		}
	}
	return found
}

// Resource types, the type URLs Envoy subscribes with.
const (
	typeCluster  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	typeEndpoint = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	typeListener = "type.googleapis.com/envoy.config.listener.v3.Listener"
)

// fetchXDS talks to the xDS server the bootstrap names as Envoy would:
// delta ADS, the bootstrap's node (with the user agent Envoy adds to it),
// its initial metadata; wildcard subscriptions to clusters and listeners,
// endpoints of every EDS cluster subscribed by name before the clusters
// are ACKed, every response ACKed (Consul sends listeners only once
// clusters and endpoints are ACKed). Every resource is decoded and checked
// with Envoy's validation rules. It returns once done holds of the
// resources received; it fails if that does not happen within 30 s (the
// registrations are in place before it starts; Consul answers in ms).
// Routes are not subscribed: the services are TCP, so Consul's listeners
// carry tcp_proxy filters and no RDS reference.
func fetchXDS(t *testing.T, ctx context.Context, bs *bootstrapv3.Bootstrap, envoyVersion *typev3.SemanticVersion, done func(*xdsConfig) bool) *xdsConfig {
	t.Helper()
	ads := bs.GetDynamicResources().GetAdsConfig()
	if ads.GetApiType() != corev3.ApiConfigSource_DELTA_GRPC || ads.GetTransportApiVersion() != corev3.ApiVersion_V3 || len(ads.GetGrpcServices()) != 1 {
		t.Fatalf("bootstrap ads_config %v: want one gRPC service, delta, v3", ads)
	}
	if bs.GetDynamicResources().GetCdsConfig().GetAds() == nil || bs.GetDynamicResources().GetLdsConfig().GetAds() == nil {
		t.Fatalf("bootstrap dynamic_resources %v: want clusters and listeners over ADS", bs.GetDynamicResources())
	}
	svc := ads.GetGrpcServices()[0]
	agent := svc.GetEnvoyGrpc().GetClusterName()
	var addr string
	for _, c := range bs.GetStaticResources().GetClusters() {
		if c.GetName() != agent {
			continue
		}
		if c.GetTransportSocket() != nil {
			t.Fatalf("bootstrap cluster %s speaks TLS: this test speaks plaintext gRPC", agent)
		}
		eps := clusterEndpoints(c.GetLoadAssignment())
		if len(eps) != 1 {
			t.Fatalf("bootstrap cluster %s endpoints %v: want one", agent, eps)
		}
		addr = eps[0]
	}
	if addr == "" {
		t.Fatalf("bootstrap has no static cluster %q for ADS", agent)
	}
	for _, h := range svc.GetInitialMetadata() {
		ctx = metadata.AppendToOutgoingContext(ctx, h.GetKey(), h.GetValue())
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatalf("delta ADS to %s: %v", addr, err)
	}
	defer func() { _ = stream.CloseSend() }()

	node := proto.Clone(bs.GetNode()).(*corev3.Node)
	node.UserAgentName = "envoy"
	node.UserAgentVersionType = &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{Version: envoyVersion}}
	send := func(r *discoveryv3.DeltaDiscoveryRequest) {
		r.Node = node
		if err := stream.Send(r); err != nil {
			t.Fatalf("send %s: %v", r.GetTypeUrl(), err)
		}
	}
	send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeCluster})
	send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeListener})

	x := &xdsConfig{listeners: map[string]*listenerv3.Listener{}, clusters: map[string]*clusterv3.Cluster{},
		endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}
	edsSubscribed := map[string]bool{}
	for !done(x) {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("delta ADS from %s: %v; received so far: %s", addr, err, x)
		}
		for _, r := range resp.GetResources() {
			var m interface {
				proto.Message
				ValidateAll() error
			}
			switch resp.GetTypeUrl() {
			case typeCluster:
				c := &clusterv3.Cluster{}
				x.clusters[r.GetName()], m = c, c
			case typeEndpoint:
				e := &endpointv3.ClusterLoadAssignment{}
				x.endpoints[r.GetName()], m = e, e
			case typeListener:
				l := &listenerv3.Listener{}
				x.listeners[r.GetName()], m = l, l
			default:
				t.Fatalf("the server sent %s, which was not subscribed", resp.GetTypeUrl())
			}
			if err := r.GetResource().UnmarshalTo(m); err != nil {
				t.Fatalf("%s %s: %v", resp.GetTypeUrl(), r.GetName(), err)
			}
			if err := m.ValidateAll(); err != nil {
				t.Errorf("%s %s does not pass Envoy's validation: %v", resp.GetTypeUrl(), r.GetName(), err)
			}
		}
		for _, n := range resp.GetRemovedResources() {
			delete(x.clusters, n)
			delete(x.endpoints, n)
			delete(x.listeners, n)
		}
		if resp.GetTypeUrl() == typeCluster {
			var sub []string
			for _, c := range x.clusters {
				if n := edsName(c); c.GetType() == clusterv3.Cluster_EDS && !edsSubscribed[n] {
					edsSubscribed[n] = true
					sub = append(sub, n)
				}
			}
			if len(sub) > 0 {
				send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeEndpoint, ResourceNamesSubscribe: sub})
			}
		}
		send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()})
	}
	return x
}

// edsName is the name Envoy asks EDS for to fill cluster c.
func edsName(c *clusterv3.Cluster) string {
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.GetName()
}

// clusterEndpoints are the host:port of every endpoint of cla.
func clusterEndpoints(cla *endpointv3.ClusterLoadAssignment) []string {
	var out []string
	for _, e := range cla.GetEndpoints() {
		for _, lb := range e.GetLbEndpoints() {
			a := lb.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, net.JoinHostPort(a.GetAddress(), strconv.Itoa(int(a.GetPortValue()))))
		}
	}
	slices.Sort(out)
	return out
}

// chainForPrefix is the listener's filter chain matching exactly ip/32.
func chainForPrefix(l *listenerv3.Listener, ip string) *listenerv3.FilterChain {
	for _, fc := range l.GetFilterChains() {
		for _, r := range fc.GetFilterChainMatch().GetPrefixRanges() {
			if r.GetAddressPrefix() == ip && r.GetPrefixLen().GetValue() == 32 {
				return fc
			}
		}
	}
	return nil
}

// tcpProxyCluster is the cluster of the chain's tcp_proxy filter, its last.
func tcpProxyCluster(t *testing.T, fc *listenerv3.FilterChain) string {
	t.Helper()
	fs := fc.GetFilters()
	if len(fs) == 0 {
		t.Fatalf("filter chain %s has no filters", fc.GetName())
	}
	var tp tcpproxyv3.TcpProxy
	if err := fs[len(fs)-1].GetTypedConfig().UnmarshalTo(&tp); err != nil {
		t.Fatalf("filter chain %s: last filter %s is not tcp_proxy: %v", fc.GetName(), fs[len(fs)-1].GetName(), err)
	}
	return tp.GetCluster()
}

// checkPublicListener: the proxy's public_listener is on the pod's IP and
// the inbound port meshlet-cni redirects to, requires client certificates
// (mTLS), and hands connections to local_app.
func checkPublicListener(t *testing.T, x *xdsConfig, pod *corev1.Pod) {
	t.Helper()
	l := x.listenerNamed("public_listener:")
	if l == nil {
		t.Fatalf("no public_listener for %s", pod.Name)
	}
	a := l.GetAddress().GetSocketAddress()
	if a.GetAddress() != pod.Status.PodIP || a.GetPortValue() != contract.ProxyInboundPort {
		t.Errorf("%s's public_listener on %s:%d: want the pod IP and inbound port %s:%d",
			pod.Name, a.GetAddress(), a.GetPortValue(), pod.Status.PodIP, contract.ProxyInboundPort)
	}
	if len(l.GetFilterChains()) != 1 {
		t.Fatalf("%s's public_listener has %d filter chains: want 1", pod.Name, len(l.GetFilterChains()))
	}
	fc := l.GetFilterChains()[0]
	var dtls tlsv3.DownstreamTlsContext
	if err := fc.GetTransportSocket().GetTypedConfig().UnmarshalTo(&dtls); err != nil {
		t.Errorf("%s's public_listener: transport socket is not a DownstreamTlsContext: %v", pod.Name, err)
	} else if !dtls.GetRequireClientCertificate().GetValue() {
		t.Errorf("%s's public_listener does not require client certificates", pod.Name)
	}
	if c := tcpProxyCluster(t, fc); c != "local_app" {
		t.Errorf("%s's public_listener proxies to %q: want local_app", pod.Name, c)
	}
}

// verifiesURISAN: the validation context accepts only a peer certificate
// with URI SAN id.
func verifiesURISAN(vc *tlsv3.CertificateValidationContext, id string) bool {
	ms := vc.GetMatchTypedSubjectAltNames()
	for _, m := range ms {
		if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI || m.GetMatcher().GetExact() != id {
			return false
		}
	}
	return len(ms) > 0
}

func hasOriginalDst(l *listenerv3.Listener) bool {
	for _, f := range l.GetListenerFilters() {
		var od originaldstv3.OriginalDst
		if f.GetTypedConfig().UnmarshalTo(&od) == nil {
			return true
		}
	}
	return false
}

// envoyImageVersion is the version of the webhook's Envoy image, which
// Envoy reports in its node (Consul ends the stream of an Envoy older than
// it supports).
func envoyImageVersion(t *testing.T, image string) *typev3.SemanticVersion {
	t.Helper()
	var v [3]uint32
	tag := strings.TrimPrefix(image[strings.LastIndex(image, ":")+1:], "v")
	if n, err := fmt.Sscanf(tag, "%d.%d.%d", &v[0], &v[1], &v[2]); n != 3 {
		t.Fatalf("envoy image %s: no x.y.z version in its tag: %v", image, err)
	}
	return &typev3.SemanticVersion{MajorNumber: v[0], MinorNumber: v[1], Patch: v[2]}
}

func consulDatacenter(t *testing.T, cl *capi.Client) string {
	t.Helper()
	self, err := cl.Agent().Self()
	if err != nil {
		t.Fatal(err)
	}
	dc, _ := self["Config"]["Datacenter"].(string)
	if dc == "" {
		t.Fatalf("the agent names no datacenter")
	}
	return dc
}

func consulTrustDomain(t *testing.T, cl *capi.Client) string {
	t.Helper()
	roots, _, err := cl.Connect().CARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	if roots.TrustDomain == "" {
		t.Fatalf("Consul's CA has no trust domain")
	}
	return roots.TrustDomain
}
