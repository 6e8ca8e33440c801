package webhook

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	yaml "go.yaml.in/yaml/v3"
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
	out, err := envoyRender(b.doc())
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
		// Envoy's protos hold UTF-8 strings only.
		if !utf8.ValidString(v) {
			errs = append(errs, fmt.Errorf("%s %q is not valid UTF-8", name, v))
		}
	}
	// The token is sent as an HTTP/2 header value: Envoy refuses NUL, CR
	// and LF in one.
	if strings.ContainsAny(b.Token, "\x00\r\n") {
		errs = append(errs, fmt.Errorf("token %q contains NUL, CR or LF, which an HTTP header value cannot hold", b.Token))
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

// doc builds the bootstrap in the shape of Envoy's proto JSON mapping:
// field names as in Envoy's protos and in their order, so that it reads
// like what Consul prints. Plain structs rather than go-control-plane's
// messages, because those register every Envoy proto when a process
// starts: megabytes in every meshlet process, the proxy's included. The
// tests hold it to Envoy's schema instead: they parse the result strictly
// with go-control-plane, run Envoy's validation rules on it (inside the
// Any fields too) and compare it with protojson's rendering of the parsed
// message, byte for byte.
func (b EnvoyBootstrap) doc() envoyDoc {
	return envoyDoc{
		Node: envoyNode{
			ID:      b.ProxyID,
			Cluster: b.ServiceName,
			// The agent reads these to find the proxy's registration.
			Metadata: map[string]string{
				"namespace": envoyOrDefault(b.Namespace),
				"partition": envoyOrDefault(b.Partition),
			},
		},
		StaticResources: envoyStatic{Clusters: []envoyCluster{{
			Name:           envoyLocalAgentCluster,
			Type:           "STATIC",
			ConnectTimeout: "1s",
			LoadAssignment: envoyLoadAssignment{
				ClusterName: envoyLocalAgentCluster,
				Endpoints: []envoyLocality{{LbEndpoints: []envoyLbEndpoint{{
					Endpoint: envoyEndpoint{Address: envoySocketAddress(b.AgentHost, b.AgentGRPCPort)},
				}}}},
			},
			// The agent serves xDS over gRPC, which needs HTTP/2 on the
			// cluster.
			TypedExtensionProtocolOptions: map[string]envoyHTTPOptions{
				envoyHTTPOptionsType: {Type: envoyTypeURL + envoyHTTPOptionsType},
			},
		}}},
		DynamicResources: envoyDynamic{
			LdsConfig: envoyADSSource(),
			CdsConfig: envoyADSSource(),
			AdsConfig: envoyAPISource{
				APIType:             "DELTA_GRPC",
				TransportAPIVersion: "V3",
				GrpcServices: []envoyGrpcService{{
					EnvoyGrpc: envoyGrpcCluster{ClusterName: envoyLocalAgentCluster},
					// Sent even when empty, as Consul does: the agent then
					// treats the stream as anonymous.
					InitialMetadata: []envoyHeader{{Key: envoyTokenHeader, Value: b.Token}},
				}},
			},
		},
		StatsConfig: envoyStats{StatsTags: b.statsTags(), UseAllDefaultTags: true},
		LayeredRuntime: envoyRuntime{Layers: []envoyRuntimeLayer{{
			Name: "base",
			// Regexes from Consul's config entries (routes, intentions)
			// can exceed Envoy's default RE2 program size limit, which
			// would make Envoy reject the whole listener; Consul raises
			// the limit.
			StaticLayer: map[string]int{"re2.max_program_size.error_level": 1048576},
		}}},
		Admin: envoyAdmin{
			AccessLog: []envoyAccessLog{{
				Name: "envoy.access_loggers.file",
				// Consul's default: the admin API's requests are not
				// logged.
				TypedConfig: envoyFileLog{Type: envoyTypeURL + envoyFileLogType, Path: "/dev/null"},
			}},
			Address: envoySocketAddress(b.AdminBind, b.AdminPort),
		},
	}
}

// Type URLs of the Any fields, and the extension name Envoy looks the
// HTTP options up by (its type name).
const (
	envoyTypeURL         = "type.googleapis.com/"
	envoyHTTPOptionsType = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	envoyFileLogType     = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
)

type envoyDoc struct {
	Node             envoyNode    `yaml:"node"`
	StaticResources  envoyStatic  `yaml:"static_resources"`
	DynamicResources envoyDynamic `yaml:"dynamic_resources"`
	StatsConfig      envoyStats   `yaml:"stats_config"`
	LayeredRuntime   envoyRuntime `yaml:"layered_runtime"`
	Admin            envoyAdmin   `yaml:"admin"`
}

type envoyNode struct {
	ID       string            `yaml:"id"`
	Cluster  string            `yaml:"cluster"`
	Metadata map[string]string `yaml:"metadata"` // a Struct: keys sorted, as protojson does
}

type envoyStatic struct {
	Clusters []envoyCluster `yaml:"clusters"`
}

type envoyCluster struct {
	Name                          string                      `yaml:"name"`
	Type                          string                      `yaml:"type"`
	ConnectTimeout                string                      `yaml:"connect_timeout"` // a Duration
	LoadAssignment                envoyLoadAssignment         `yaml:"load_assignment"`
	TypedExtensionProtocolOptions map[string]envoyHTTPOptions `yaml:"typed_extension_protocol_options"`
}

type envoyLoadAssignment struct {
	ClusterName string          `yaml:"cluster_name"`
	Endpoints   []envoyLocality `yaml:"endpoints"`
}

type envoyLocality struct {
	LbEndpoints []envoyLbEndpoint `yaml:"lb_endpoints"`
}

type envoyLbEndpoint struct {
	Endpoint envoyEndpoint `yaml:"endpoint"`
}

type envoyEndpoint struct {
	Address envoyAddress `yaml:"address"`
}

type envoyAddress struct {
	SocketAddress envoySocket `yaml:"socket_address"`
}

type envoySocket struct {
	Address   string `yaml:"address"`
	PortValue int    `yaml:"port_value"`
}

// envoyHTTPOptions is an Any holding HttpProtocolOptions with HTTP/2.
type envoyHTTPOptions struct {
	Type               string `yaml:"@type"`
	ExplicitHTTPConfig struct {
		HTTP2ProtocolOptions struct{} `yaml:"http2_protocol_options"`
	} `yaml:"explicit_http_config"`
}

type envoyDynamic struct {
	LdsConfig envoyConfigSource `yaml:"lds_config"`
	CdsConfig envoyConfigSource `yaml:"cds_config"`
	AdsConfig envoyAPISource    `yaml:"ads_config"`
}

type envoyConfigSource struct {
	Ads                 struct{} `yaml:"ads"`
	InitialFetchTimeout string   `yaml:"initial_fetch_timeout"` // a Duration
	ResourceAPIVersion  string   `yaml:"resource_api_version"`
}

type envoyAPISource struct {
	APIType             string             `yaml:"api_type"`
	TransportAPIVersion string             `yaml:"transport_api_version"`
	GrpcServices        []envoyGrpcService `yaml:"grpc_services"`
}

type envoyGrpcService struct {
	EnvoyGrpc       envoyGrpcCluster `yaml:"envoy_grpc"`
	InitialMetadata []envoyHeader    `yaml:"initial_metadata"`
}

type envoyGrpcCluster struct {
	ClusterName string `yaml:"cluster_name"`
}

type envoyHeader struct {
	Key   string `yaml:"key"`
	Value string `yaml:"value,omitempty"` // proto3 JSON leaves an empty string out
}

type envoyStats struct {
	StatsTags         []envoyTag `yaml:"stats_tags"`
	UseAllDefaultTags bool       `yaml:"use_all_default_tags"` // a BoolValue
}

type envoyTag struct {
	TagName    string `yaml:"tag_name"`
	Regex      string `yaml:"regex,omitempty"`
	FixedValue string `yaml:"fixed_value,omitempty"`
}

type envoyRuntime struct {
	Layers []envoyRuntimeLayer `yaml:"layers"`
}

type envoyRuntimeLayer struct {
	Name        string         `yaml:"name"`
	StaticLayer map[string]int `yaml:"static_layer"` // a Struct
}

type envoyAdmin struct {
	AccessLog []envoyAccessLog `yaml:"access_log"`
	Address   envoyAddress     `yaml:"address"`
}

type envoyAccessLog struct {
	Name        string       `yaml:"name"`
	TypedConfig envoyFileLog `yaml:"typed_config"`
}

// envoyFileLog is an Any holding FileAccessLog.
type envoyFileLog struct {
	Type string `yaml:"@type"`
	Path string `yaml:"path"`
}

func envoySocketAddress(host string, port int) envoyAddress {
	return envoyAddress{SocketAddress: envoySocket{Address: host, PortValue: port}}
}

// envoyADSSource: listeners and clusters come over the ADS stream. A zero
// initial fetch timeout makes Envoy wait for them however long the agent
// takes, instead of starting with none.
func envoyADSSource() envoyConfigSource {
	return envoyConfigSource{InitialFetchTimeout: "0s", ResourceAPIVersion: "V3"}
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

func (b EnvoyBootstrap) statsTags() []envoyTag {
	var tags []envoyTag
	regex := func(name, re string) {
		tags = append(tags, envoyTag{TagName: name, Regex: re})
	}
	fixed := func(name, value string) {
		if value == "" {
			return
		}
		tags = append(tags, envoyTag{TagName: name, FixedValue: value})
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

// envoyRender renders the bootstrap as block YAML, indented by two.
func envoyRender(d envoyDoc) (string, error) {
	var doc yaml.Node
	if err := doc.Encode(d); err != nil {
		return "", fmt.Errorf("encoding as YAML: %w", err)
	}
	envoyYAMLStyle(&doc)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return "", fmt.Errorf("encoding as YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return "", fmt.Errorf("encoding as YAML: %w", err)
	}
	return buf.String(), nil
}

// envoyYAMLStyle turns the tree into block style with plain scalars, the
// encoder quoting where YAML 1.2 needs it. Two kinds of strings are
// double-quoted besides:
//   - those holding a $(VAR) reference: kubelet expands them before Envoy
//     parses the YAML, and quoting keeps whatever value they expand to (an
//     IPv6 address, a name that looks like a number) a string;
//   - those Envoy would read as something else if plain. Envoy's YAML
//     loader (yaml-cpp) reads a plain yes, on, y (and their no forms) as a
//     boolean and anything numeric as a number, where the YAML 1.2 encoder
//     leaves them plain; a namespace or datacenter named "yes" would then
//     make the bootstrap invalid.
func envoyYAMLStyle(n *yaml.Node) {
	switch n.Kind {
	case yaml.ScalarNode:
		n.Style = 0
		if n.Tag == "!!str" && (strings.Contains(n.Value, "$(") || !envoyPlainString(n.Value)) {
			n.Style = yaml.DoubleQuotedStyle
		}
	case yaml.MappingNode, yaml.SequenceNode:
		n.Style = 0
	}
	for _, c := range n.Content {
		envoyYAMLStyle(c)
	}
}

// envoyPlainString: s, written plain, is read back as the string s by
// yaml-cpp's conversions as Envoy applies them (null, then bool, then
// number). It errs on the side of quoting.
func envoyPlainString(s string) bool {
	switch strings.ToLower(s) {
	case "", "~", "null", "y", "yes", "n", "no", "true", "false", "on", "off":
		return false
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return false
	}
	if _, err := strconv.ParseInt(s, 0, 64); err == nil {
		return false
	}
	// .inf, .nan and their signed and capitalised forms.
	if v := strings.TrimLeft(strings.ToLower(s), "+-"); v == ".inf" || v == ".nan" {
		return false
	}
	return true
}
