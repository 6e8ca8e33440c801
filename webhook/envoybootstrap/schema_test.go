package envoybootstrap

import (
	"bytes"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	filelogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	yaml "go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// The bootstrap is written without go-control-plane (document.go says why);
// these tests hold it to Envoy's schema. Importing the two extension
// packages registers the types its Any fields name, so that parse can
// resolve them.

// validate runs Envoy's validation rules on the bootstrap and on the
// messages inside its Any fields, which ValidateAll does not look into.
func validate(t testing.TB, bs *bootstrapv3.Bootstrap) {
	t.Helper()
	if err := bs.ValidateAll(); err != nil {
		t.Fatalf("ValidateAll: %v", err)
	}
	for name, a := range bs.GetStaticResources().GetClusters()[0].GetTypedExtensionProtocolOptions() {
		var h upstreamhttpv3.HttpProtocolOptions
		if err := a.UnmarshalTo(&h); err != nil {
			t.Fatalf("typed_extension_protocol_options[%s]: %v", name, err)
		}
		if err := h.ValidateAll(); err != nil {
			t.Fatalf("typed_extension_protocol_options[%s]: %v", name, err)
		}
		if h.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
			t.Fatalf("typed_extension_protocol_options[%s] does not ask for HTTP/2", name)
		}
	}
	if ts := bs.GetStaticResources().GetClusters()[0].GetTransportSocket(); ts != nil {
		var u tlsv3.UpstreamTlsContext
		if err := ts.GetTypedConfig().UnmarshalTo(&u); err != nil {
			t.Fatalf("transport_socket %s: %v", ts.GetName(), err)
		}
		if err := u.ValidateAll(); err != nil {
			t.Fatalf("transport_socket %s: %v", ts.GetName(), err)
		}
	}
	for _, l := range bs.GetAdmin().GetAccessLog() {
		var f filelogv3.FileAccessLog
		if err := l.GetTypedConfig().UnmarshalTo(&f); err != nil {
			t.Fatalf("admin access log %s: %v", l.GetName(), err)
		}
		if err := f.ValidateAll(); err != nil {
			t.Fatalf("admin access log %s: %v", l.GetName(), err)
		}
	}
}

// protoRender renders a parsed bootstrap the way go-control-plane
// would: protojson with the proto field names, re-emitted as YAML in
// render's style. Equal text means the hand-written structs have
// Envoy's field names, nesting, order and value encodings.
func protoRender(t testing.TB, bs *bootstrapv3.Bootstrap) string {
	t.Helper()
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(bs)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(js, &doc); err != nil {
		t.Fatal(err)
	}
	yamlStyle(&doc)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestIsEnvoysSchema: each golden case parses strictly, validates (Any
// contents included), and is exactly what protojson renders for the parsed
// message.
func TestIsEnvoysSchema(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			y := yamlOf(t, tc.in())
			bs := parse(t, y)
			validate(t, bs)
			if got := protoRender(t, bs); got != y {
				t.Errorf("protojson renders the parsed bootstrap differently:\n--- ours\n%s\n--- protojson\n%s", y, got)
			}
		})
	}
}

// TestSchemaCheckBites: the render comparison notices a field out of Envoy's
// order and a value in the wrong encoding, which a lenient parse would
// accept.
func TestSchemaCheckBites(t *testing.T) {
	good := yamlOf(t, inPod())
	for _, tc := range []struct{ name, old, new string }{
		{"order", "  cluster: web\n  metadata:", "  metadata:"},
		{"duration", "connect_timeout: 1s", "connect_timeout: 1.000s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			broken := strings.Replace(good, tc.old, tc.new, 1)
			if tc.name == "order" {
				broken = strings.Replace(broken, "    partition: default\n", "    partition: default\n  cluster: web\n", 1)
			}
			if broken == good {
				t.Fatalf("bootstrap has no %q to change", tc.old)
			}
			bs := parse(t, broken)
			validate(t, bs)
			if protoRender(t, bs) == broken {
				t.Error("the comparison did not notice")
			}
		})
	}
}

// FuzzYAML: whatever check() lets through is a bootstrap Envoy accepts
// (strict parse, validation rules) that carries the values it was given. The
// webhook no longer runs Envoy's validation at admission, so this is what
// stands for it.
func FuzzYAML(f *testing.F) {
	f.Add("default_web-abc-sidecar-proxy", "web", "10.244.0.1", "127.0.0.1", "", "", "dc1", "", 8502, 19000)
	f.Add("$(PROXY_ID)", "web", "$(HOST_IP)", "::1", "team-a", "part-1", "", "$(CONSUL_ACL_TOKEN)", 1, 65535)
	f.Add("p", "1e3", "fd00::1", "0.0.0.0", "yes", "~", "null", "tok\u00e9n", 8502, 19000)
	f.Fuzz(func(t *testing.T, proxyID, service, agentHost, adminBind, ns, partition, dc, token string, grpcPort, adminPort int) {
		b := Config{ProxyID: proxyID, ServiceName: service, AgentHost: agentHost, AgentGRPCPort: grpcPort,
			AdminBind: adminBind, AdminPort: adminPort, Namespace: ns, Partition: partition, Datacenter: dc, Token: token}
		y, err := b.YAML()
		if err != nil {
			return
		}
		bs := parse(t, y)
		validate(t, bs)
		if got := protoRender(t, bs); got != y {
			t.Fatalf("protojson renders the parsed bootstrap differently:\n--- ours\n%s\n--- protojson\n%s", y, got)
		}
		n := bs.GetNode()
		if n.GetId() != proxyID || n.GetCluster() != service {
			t.Fatalf("node %q/%q, want %q/%q", n.GetId(), n.GetCluster(), proxyID, service)
		}
		if md := n.GetMetadata().GetFields(); md["namespace"].GetStringValue() != orDefault(ns) ||
			md["partition"].GetStringValue() != orDefault(partition) {
			t.Fatalf("node metadata %v, want namespace %q partition %q", md, ns, partition)
		}
		meta := bs.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetInitialMetadata()[0]
		if meta.GetValue() != token {
			t.Fatalf("token %q, want %q", meta.GetValue(), token)
		}
		sa := bs.GetAdmin().GetAddress().GetSocketAddress()
		if sa.GetAddress() != adminBind || int(sa.GetPortValue()) != adminPort {
			t.Fatalf("admin %s:%d, want %s:%d", sa.GetAddress(), sa.GetPortValue(), adminBind, adminPort)
		}
	})
}

// TestQuotesWhatEnvoyMisreads: values Envoy's YAML loader would read as a
// boolean, a number or null when plain are quoted; other names stay plain,
// as in Consul's output.
func TestQuotesWhatEnvoyMisreads(t *testing.T) {
	for _, v := range []string{"yes", "On", "N", "OFF", "true", "1e3", "0x10", "12", "-1.5", ".inf", "-.Inf", ".NaN", "~", "Null"} {
		b := inPod()
		b.Datacenter = v
		if want := "fixed_value: \"" + v + "\"\n"; !strings.Contains(yamlOf(t, b), want) {
			t.Errorf("datacenter %q: bootstrap lacks %s", v, want)
		}
	}
	for _, v := range []string{"dc1", "yess", "onward", "1.2.3", "web-01"} {
		b := inPod()
		b.Datacenter = v
		if want := "fixed_value: " + v + "\n"; !strings.Contains(yamlOf(t, b), want) {
			t.Errorf("datacenter %q: bootstrap lacks %s", v, want)
		}
	}
}
