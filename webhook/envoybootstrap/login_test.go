package envoybootstrap

import (
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/meshlet/meshlet/contract"
)

// loginToken stands for the token of the pod's login.
const loginToken = "6a1b9c2e-0d3f-4e5a-8b7c-9d0e1f2a3b4c"

// merged is the bootstrap Envoy runs with on a Consul with ACLs: the login
// sidecar's file (-c) loaded first, then --config-yaml, after kubelet's
// expansion, merged into it. Envoy merges the two messages as
// proto.Merge does: message fields recursively, repeated fields appended.
func merged(t *testing.T, b Config) *bootstrapv3.Bootstrap {
	t.Helper()
	file, err := contract.EnvoyADSBootstrap(loginToken)
	if err != nil {
		t.Fatal(err)
	}
	var bs bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(file, &bs); err != nil {
		t.Fatalf("the login sidecar's file is not an Envoy bootstrap: %v\n%s", err, file)
	}
	proto.Merge(&bs, parse(t, kubeletExpand(yamlOf(t, b), podEnv)))
	return &bs
}

// TestLoginBootstrapMerges: the webhook's part and the login sidecar's make
// one valid bootstrap with one ADS gRPC service, to the Consul agent's
// cluster over TLS, carrying the login's token, and nothing of the
// webhook's part lost.
func TestLoginBootstrapMerges(t *testing.T) {
	bs := merged(t, inPodSecure())
	validate(t, bs)
	gs := bs.GetDynamicResources().GetAdsConfig().GetGrpcServices()
	if len(gs) != 1 {
		t.Fatalf("%d ADS gRPC services, want 1: %v", len(gs), gs)
	}
	if c := gs[0].GetEnvoyGrpc().GetClusterName(); c != localAgentCluster {
		t.Errorf("ADS goes to cluster %q, want %q", c, localAgentCluster)
	}
	md := gs[0].GetInitialMetadata()
	if len(md) != 1 || md[0].GetKey() != tokenHeader || md[0].GetValue() != loginToken {
		t.Errorf("ADS metadata %v, want only %s: the login's token", md, tokenHeader)
	}
	if bs.GetStaticResources().GetClusters()[0].GetTransportSocket() == nil {
		t.Error("the Consul agent's cluster lost its TLS")
	}
	alone := parse(t, kubeletExpand(yamlOf(t, inPodSecure()), podEnv))
	alone.DynamicResources.AdsConfig.GrpcServices = gs
	if !proto.Equal(alone, bs) {
		t.Errorf("the merge changed more than the ADS gRPC service:\n%v\nwant\n%v", bs, alone)
	}
}

// TestLoginBootstrapNeedsTokenFromLogin: a YAML that still holds its own
// gRPC service would give Envoy two after the merge, one without the
// token; TokenFromLogin is what prevents it.
func TestLoginBootstrapNeedsTokenFromLogin(t *testing.T) {
	b := inPodSecure()
	b.TokenFromLogin = false
	if n := len(merged(t, b).GetDynamicResources().GetAdsConfig().GetGrpcServices()); n != 2 {
		t.Fatalf("%d ADS gRPC services after merging a YAML with its own, want 2 (Envoy appends repeated fields)", n)
	}
}

// TestCheckRefusesTLSAndLoginMistakes: the TLS and login fields are checked
// like the others.
func TestCheckRefusesTLSAndLoginMistakes(t *testing.T) {
	for name, mut := range map[string]func(*Config){
		"token and login":     func(b *Config) { b.Token = "x" },
		"server name, no CA":  func(b *Config) { b.AgentCAPEM = "" },
		"CA without PEM":      func(b *Config) { b.AgentCAPEM = "not a certificate" },
		"CA with a $$":        func(b *Config) { b.AgentCAPEM += "$$" },
		"server name with $$": func(b *Config) { b.AgentServerName = "a$$b" },
	} {
		b := inPodSecure()
		mut(&b)
		if _, err := b.YAML(); err == nil {
			t.Errorf("%s: YAML() = nil error, want a refusal", name)
		}
	}
}

// consulTLSFixture is `consul connect envoy -bootstrap` for the captured
// proxy over TLS (-grpc-addr https://…:8503, -grpc-ca-file
// testdata/agent-ca.pem) with a token; docs/envoy-bootstrap.md says how
// it was made, and TestSecureModeEnvoyBootstrapFixtureIsConsuls (e2e)
// that it is still what Consul prints.
const (
	consulTLSFixture = "testdata/consul-bootstrap-tls.json"
	fixtureToken     = "11111111-2222-4333-8444-555555555555"
)

// TestLoginBootstrapMatchesConsul: the bootstrap Envoy runs with on a
// Consul with ACLs and TLS (the webhook's YAML merged into the login
// sidecar's file, for the same proxy, CA and token) is what Consul prints
// for it, but for the differences documented for the plain bootstrap.
func TestLoginBootstrapMatchesConsul(t *testing.T) {
	b := inPodSecure()
	b.AgentServerName = "" // Consul's bootstrap has no SNI and checks no name
	file, err := contract.EnvoyADSBootstrap(fixtureToken)
	if err != nil {
		t.Fatal(err)
	}
	var bs bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(file, &bs); err != nil {
		t.Fatal(err)
	}
	proto.Merge(&bs, parse(t, kubeletExpand(yamlOf(t, b), podEnv)))
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(&bs)
	if err != nil {
		t.Fatal(err)
	}
	var known []consulDifference
	for _, d := range consulDifferences {
		// The token is there: no empty value to leave out.
		if !strings.HasSuffix(d.path, ".initial_metadata[0].value") {
			known = append(known, d)
		}
	}
	diffs, unused := compareWith(readFixture(t, consulTLSFixture), generic(t, string(js)), known)
	for _, d := range diffs {
		t.Errorf("differs from Consul's output: %s", d)
	}
	for _, p := range unused {
		t.Errorf("documented difference at %s no longer occurs", p)
	}
}
