package webhook

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/config/metrics/v3"
	filelogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	yaml "go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// EnvoyBootstrap is what the inline bootstrap depends on. YAML renders the
// same bootstrap `consul connect envoy -bootstrap` prints for a sidecar
// proxy (see docs/envoy-bootstrap.md for the few differences and why), so
// that Envoy can start without an init container or a shared volume.
//
// String fields may hold Kubernetes `$(VAR)` references: kubelet expands
// them in the container's args from its env before Envoy starts.
//
// There is no ready listener: Consul adds one only when asked
// (-envoy-ready-bind-address/-port) or for ingress gateways.
type EnvoyBootstrap struct {
	ProxyID       string // usually "$(PROXY_ID)": expanded by kubelet
	ServiceName   string // the Consul service the proxy fronts (node.cluster)
	AgentHost     string // usually "$(HOST_IP)"
	AgentGRPCPort int    // 8502
	AdminBind     string // "127.0.0.1"
	AdminPort     int    // 19000
	Namespace     string // Consul Enterprise namespace; "" when not used
	Partition     string // Consul Enterprise admin partition; "" when not used

	// Datacenter is the Consul datacenter of the node's agent. Consul reads
	// it from the agent and tags every stat with it
	// (consul.source.datacenter); "" leaves that tag out, as Consul does
	// when it has no datacenter.
	Datacenter string

	// Token is the ACL token Envoy presents to the agent's xDS server
	// (x-consul-token). "" when ACLs are off, which is what Consul prints
	// then. A literal token would be readable by anyone who can read the
	// pod; a `$(VAR)` reference to a Secret-backed env var keeps it out of
	// the pod spec, though it is still in Envoy's argv on the node.
	Token string
}

// Names Consul gives the parts of the bootstrap. The agent's xDS server and
// Consul's dashboards depend on them, so they are not ours to choose.
const (
	envoyLocalAgentCluster = "local_agent"
	envoyTokenHeader       = "x-consul-token"
	envoyDefaultTenancy    = "default" // namespace and partition when unset
)

// envoyVarRef is a whole-value Kubernetes variable reference such as
// $(HOST_IP): only these may stand in for an address, because anything else
// must already be an IP (a STATIC cluster and the admin listener do not
// resolve names).
var envoyVarRef = regexp.MustCompile(`^\$\([A-Za-z_][A-Za-z0-9_]*\)$`)

// YAML returns the value for Envoy's --config-yaml. `$(VAR)` references are
// left as they are (double-quoted, so the expanded value is always read as
// a string, even an IPv6 address).
func (b EnvoyBootstrap) YAML() (string, error) {
	if err := b.check(); err != nil {
		return "", fmt.Errorf("envoy bootstrap for proxy %q: %w", b.ProxyID, err)
	}
	bs, err := b.proto()
	if err != nil {
		return "", fmt.Errorf("envoy bootstrap for proxy %q: %w", b.ProxyID, err)
	}
	// Envoy would refuse what these rules refuse, but only when the pod
	// starts; refusing here turns that into an admission error.
	if err := bs.ValidateAll(); err != nil {
		return "", fmt.Errorf("envoy bootstrap for proxy %q is invalid: %w", b.ProxyID, err)
	}
	out, err := envoyProtoYAML(bs)
	if err != nil {
		return "", fmt.Errorf("envoy bootstrap for proxy %q: %w", b.ProxyID, err)
	}
	return out, nil
}

func (b EnvoyBootstrap) check() error {
	var errs []error
	if b.ProxyID == "" {
		errs = append(errs, errors.New("ProxyID is empty"))
	}
	if b.ServiceName == "" {
		errs = append(errs, errors.New("ServiceName is empty"))
	}
	if !envoyIPOrVarRef(b.AgentHost) {
		errs = append(errs, fmt.Errorf("AgentHost %q is neither an IP address nor a $(VAR) reference", b.AgentHost))
	}
	if !envoyIPOrVarRef(b.AdminBind) {
		errs = append(errs, fmt.Errorf("AdminBind %q is neither an IP address nor a $(VAR) reference", b.AdminBind))
	}
	if b.AgentGRPCPort < 1 || b.AgentGRPCPort > 65535 {
		errs = append(errs, fmt.Errorf("AgentGRPCPort %d is not in 1-65535", b.AgentGRPCPort))
	}
	if b.AdminPort < 1 || b.AdminPort > 65535 {
		errs = append(errs, fmt.Errorf("AdminPort %d is not in 1-65535", b.AdminPort))
	}
	// kubelet turns $$ into $, so the bootstrap Envoy got would not be the
	// one rendered here.
	for name, v := range map[string]string{
		"ProxyID": b.ProxyID, "ServiceName": b.ServiceName, "AgentHost": b.AgentHost,
		"AdminBind": b.AdminBind, "Namespace": b.Namespace, "Partition": b.Partition,
		"Datacenter": b.Datacenter, "Token": b.Token,
	} {
		if strings.Contains(v, "$$") {
			errs = append(errs, fmt.Errorf("%s %q contains $$, which kubelet would rewrite to $", name, v))
		}
	}
	return errors.Join(errs...)
}

func envoyIPOrVarRef(s string) bool {
	return net.ParseIP(s) != nil || envoyVarRef.MatchString(s)
}

func envoyOrDefault(s string) string {
	if s == "" {
		return envoyDefaultTenancy
	}
	return s
}

// proto builds the bootstrap as go-control-plane messages rather than as
// text, so that field names, enum values and nesting are Envoy's by
// construction and the result can be validated with Envoy's own rules.
func (b EnvoyBootstrap) proto() (*bootstrapv3.Bootstrap, error) {
	accessLog, err := envoyAny(&filelogv3.FileAccessLog{
		// Consul's default: the admin API's requests are not logged.
		Path: "/dev/null",
	})
	if err != nil {
		return nil, err
	}
	// The agent serves xDS over gRPC, which needs HTTP/2 on the cluster.
	h2, err := envoyAny(&upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		},
	})
	if err != nil {
		return nil, err
	}
	metadata, err := structpb.NewStruct(map[string]any{
		// The agent reads these to find the proxy's registration.
		"namespace": envoyOrDefault(b.Namespace),
		"partition": envoyOrDefault(b.Partition),
	})
	if err != nil {
		return nil, fmt.Errorf("node metadata: %w", err)
	}
	runtime, err := structpb.NewStruct(map[string]any{
		// Regexes from Consul's config entries (routes, intentions) can
		// exceed Envoy's default RE2 program size limit, which would make
		// Envoy reject the whole listener; Consul raises the limit.
		"re2.max_program_size.error_level": 1048576,
	})
	if err != nil {
		return nil, fmt.Errorf("runtime layer: %w", err)
	}

	return &bootstrapv3.Bootstrap{
		Node: &corev3.Node{
			Id:       b.ProxyID,
			Cluster:  b.ServiceName,
			Metadata: metadata,
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Clusters: []*clusterv3.Cluster{{
				Name:                 envoyLocalAgentCluster,
				ConnectTimeout:       durationpb.New(time.Second),
				ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
				TypedExtensionProtocolOptions: map[string]*anypb.Any{
					"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2,
				},
				LoadAssignment: &endpointv3.ClusterLoadAssignment{
					ClusterName: envoyLocalAgentCluster,
					Endpoints: []*endpointv3.LocalityLbEndpoints{{
						LbEndpoints: []*endpointv3.LbEndpoint{{
							HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
								Endpoint: &endpointv3.Endpoint{
									Address: envoySocketAddress(b.AgentHost, b.AgentGRPCPort),
								},
							},
						}},
					}},
				},
			}},
		},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			LdsConfig: envoyADSSource(),
			CdsConfig: envoyADSSource(),
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:             corev3.ApiConfigSource_DELTA_GRPC,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
						EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: envoyLocalAgentCluster},
					},
					// Sent even when empty, as Consul does: the agent
					// then treats the stream as anonymous.
					InitialMetadata: []*corev3.HeaderValue{{Key: envoyTokenHeader, Value: b.Token}},
				}},
			},
		},
		StatsConfig: &metricsv3.StatsConfig{
			StatsTags:         b.statsTags(),
			UseAllDefaultTags: wrapperspb.Bool(true),
		},
		Admin: &bootstrapv3.Admin{
			AccessLog: []*accesslogv3.AccessLog{{
				Name:       "envoy.access_loggers.file",
				ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: accessLog},
			}},
			Address: envoySocketAddress(b.AdminBind, b.AdminPort),
		},
		LayeredRuntime: &bootstrapv3.LayeredRuntime{
			Layers: []*bootstrapv3.RuntimeLayer{{
				Name:           "base",
				LayerSpecifier: &bootstrapv3.RuntimeLayer_StaticLayer{StaticLayer: runtime},
			}},
		},
	}, nil
}

// envoyAny validates m before packing it: ValidateAll on the bootstrap
// does not look inside Any fields.
func envoyAny(m interface {
	proto.Message
	ValidateAll() error
}) (*anypb.Any, error) {
	name := m.ProtoReflect().Descriptor().FullName()
	if err := m.ValidateAll(); err != nil {
		return nil, fmt.Errorf("%s is invalid: %w", name, err)
	}
	a, err := anypb.New(m)
	if err != nil {
		return nil, fmt.Errorf("packing %s: %w", name, err)
	}
	return a, nil
}

func envoySocketAddress(host string, port int) *corev3.Address {
	return &corev3.Address{
		Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{
				Address: host,
				// check() has bounded port to 1-65535.
				PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
			},
		},
	}
}

// envoyADSSource: listeners and clusters come over the ADS stream. A zero
// initial fetch timeout makes Envoy wait for them however long the agent
// takes, instead of starting with none.
func envoyADSSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		InitialFetchTimeout:   durationpb.New(0),
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

// Stats tags. Consul names upstream clusters
//
//	[hash~][subset.]service.namespace.[partition.]datacenter.routing.trustdomain.consul
//
// (peered ones: service.[namespace.]peer.external.trustdomain.consul) and
// upstream listeners (tcp|http).upstream[_peered].service[.namespace][.partition].last
// where last is the datacenter or the peer. Its bootstrap carries one regex
// per label so that dashboards get each label as a tag; the rules below
// describe those names and generate the same regexes, in the same order
// (Envoy applies tag extractors in order).

const envoyLabel = `[^.]+`

type envoyNamePart struct {
	name     string
	optional bool
	pattern  string // regex for the label; envoyLabel when empty
	sep      string // regex for what ends the label
}

var (
	envoyClusterName = []envoyNamePart{
		{name: "custom_hash", optional: true, sep: `~`},
		{name: "service_subset", optional: true, sep: `\.`},
		{name: "service", sep: `\.`},
		{name: "namespace", sep: `\.`},
		{name: "partition", optional: true, sep: `\.`},
		{name: "datacenter", sep: `\.`},
		{name: "routing_type", sep: `\.`},
		{name: "trust_domain", sep: `\.`},
	}
	envoyPeeredClusterName = []envoyNamePart{
		{name: "service", sep: `\.`},
		{name: "namespace", optional: true, sep: `\.`},
		{name: "peer", sep: `\.`},
		{name: "routing_type", pattern: `external`, sep: `\.`},
		{name: "trust_domain", sep: `\.`},
	}
	envoyListenerName = []envoyNamePart{
		{name: "service"},
		{name: "namespace", optional: true},
		{name: "partition", optional: true},
		{name: "last"},
	}
	envoyPeeredListenerName = []envoyNamePart{
		{name: "service"},
		{name: "namespace", optional: true},
		{name: "peer"},
	}
)

// envoyClusterRule extracts one label of an upstream cluster's stats name.
type envoyClusterRule struct {
	label string
	// through: capture the name from its start through this label (the
	// target and full_target tags) instead of label alone.
	through bool
	// internalOnly: match only local (non-peered) routing types, the only
	// ones whose names carry a partition and datacenter.
	internalOnly bool
	peered       bool
}

var envoyClusterRules = []envoyClusterRule{
	{label: "custom_hash"},
	{label: "service_subset"},
	{label: "service"},
	{label: "namespace"},
	{label: "partition", internalOnly: true},
	{label: "datacenter", internalOnly: true},
	{label: "peer", peered: true},
	{label: "routing_type"},
	{label: "trust_domain"},
	{label: "datacenter", through: true},   // tag "target"
	{label: "trust_domain", through: true}, // tag "full_target"
}

func (r envoyClusterRule) tag() string {
	switch {
	case r.through && r.label == "datacenter":
		return "target"
	case r.through:
		return "full_target"
	}
	return r.label
}

// regex renders the rule. The outer group is what Envoy strips from the
// stat's name, the inner one the tag's value. passthrough: also match
// transparent-proxy passthrough clusters (not done by the deprecated tags,
// which predate them).
func (r envoyClusterRule) regex(passthrough bool) string {
	parts := envoyClusterName
	prefix := `^cluster\.`
	if r.peered {
		parts = envoyPeeredClusterName
	} else if passthrough {
		prefix += `(?:passthrough~)?`
	}
	var sb strings.Builder
	sb.WriteString(prefix + "(")
	if r.through {
		sb.WriteString("(")
	}
	for _, p := range parts {
		body := p.pattern
		if body == "" {
			body = envoyLabel
		}
		if r.internalOnly && p.name == "routing_type" {
			body = `internal[^.]*`
		}
		if p.name == r.label {
			if r.through {
				body += ")"
			} else {
				body = "(" + body + ")"
			}
		}
		piece := body + p.sep
		if p.optional {
			piece = "(?:" + piece + ")?"
		}
		sb.WriteString(piece)
	}
	sb.WriteString(`consul\.)`)
	return sb.String()
}

// envoyListenerRule extracts one label of an upstream listener's stats name.
type envoyListenerRule struct {
	tag   string
	label string
	kinds string // which listeners: upstream, upstream_peered or both
	parts []envoyNamePart
}

var envoyListenerRules = []envoyListenerRule{
	{tag: "service", label: "service", kinds: `upstream(?:_peered)?`, parts: envoyListenerName},
	{tag: "datacenter", label: "last", kinds: `upstream`, parts: envoyListenerName},
	{tag: "peer", label: "peer", kinds: `upstream_peered`, parts: envoyPeeredListenerName},
	{tag: "namespace", label: "namespace", kinds: `upstream(?:_peered)?`, parts: envoyListenerName},
	{tag: "partition", label: "partition", kinds: `upstream`, parts: envoyListenerName},
}

func (r envoyListenerRule) regex() string {
	var sb strings.Builder
	sb.WriteString(`^(?:tcp|http)\.` + r.kinds + `\.(`)
	for i, p := range r.parts {
		body := envoyLabel
		if p.name == r.label {
			body = "(" + body + ")"
		}
		if i > 0 {
			body = `\.` + body
		}
		if p.optional {
			body = "(?:" + body + ")?"
		}
		sb.WriteString(body)
	}
	sb.WriteString(`\.)`)
	return sb.String()
}

func (b EnvoyBootstrap) statsTags() []*metricsv3.TagSpecifier {
	var tags []*metricsv3.TagSpecifier
	regex := func(name, re string) {
		tags = append(tags, &metricsv3.TagSpecifier{
			TagName:  name,
			TagValue: &metricsv3.TagSpecifier_Regex{Regex: re},
		})
	}
	fixed := func(name, value string) {
		if value == "" {
			return
		}
		tags = append(tags, &metricsv3.TagSpecifier{
			TagName:  name,
			TagValue: &metricsv3.TagSpecifier_FixedValue{FixedValue: value},
		})
	}

	for _, r := range envoyClusterRules {
		regex("consul.destination."+r.tag(), r.regex(true))
	}
	for _, r := range envoyListenerRules {
		regex("consul.upstream."+r.tag, r.regex())
	}
	// The tags Consul 1.9 renamed to consul.destination.*. Consul still
	// emits them unless told not to, and dashboards may still use them.
	for _, r := range envoyClusterRules {
		if r.peered || (r.label == "partition" && !r.through) {
			continue // added after the rename, so never had an old name
		}
		regex("consul."+r.tag(), r.regex(false))
	}

	// local_cluster is Consul's older name for the source service.
	fixed("local_cluster", b.ServiceName)
	fixed("consul.source.service", b.ServiceName)
	fixed("consul.source.namespace", envoyOrDefault(b.Namespace))
	fixed("consul.source.partition", envoyOrDefault(b.Partition))
	fixed("consul.source.datacenter", b.Datacenter)
	return tags
}

// envoyProtoYAML renders m as block YAML, fields in the order of Envoy's
// protos. protojson does the proto-to-JSON mapping (Any, Duration, enums,
// wrappers); the JSON is then re-emitted as YAML so that it reads well in
// the pod spec.
func envoyProtoYAML(m proto.Message) (string, error) {
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("encoding %s as JSON: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(js, &doc); err != nil {
		return "", fmt.Errorf("reading back the JSON of %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	envoyYAMLStyle(&doc)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return "", fmt.Errorf("encoding %s as YAML: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	if err := enc.Close(); err != nil {
		return "", fmt.Errorf("encoding %s as YAML: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return buf.String(), nil
}

// envoyYAMLStyle turns the JSON-shaped (flow, quoted) tree into block
// style with plain scalars, the encoder quoting where YAML needs it.
// Strings holding a $(VAR) reference stay double-quoted: kubelet expands
// them before Envoy parses the YAML, and quoting keeps whatever value they
// expand to (an IPv6 address, a name that looks like a number) a string.
func envoyYAMLStyle(n *yaml.Node) {
	switch n.Kind {
	case yaml.ScalarNode:
		n.Style = 0
		if n.Tag == "!!str" && strings.Contains(n.Value, "$(") {
			n.Style = yaml.DoubleQuotedStyle
		}
	case yaml.MappingNode, yaml.SequenceNode:
		n.Style = 0
	}
	for _, c := range n.Content {
		envoyYAMLStyle(c)
	}
}
