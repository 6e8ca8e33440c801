package envoybootstrap

// The bootstrap's parts, shaped like Envoy's proto JSON mapping: each
// struct a message, its fields named and ordered as in Envoy's protos, so
// that the YAML encoder writes what protojson would (schema_test.go holds
// it to that).

type document struct {
	Node             node             `yaml:"node"`
	StaticResources  staticResources  `yaml:"static_resources"`
	DynamicResources dynamicResources `yaml:"dynamic_resources"`
	StatsConfig      statsConfig      `yaml:"stats_config"`
	LayeredRuntime   layeredRuntime   `yaml:"layered_runtime"`
	Admin            admin            `yaml:"admin"`
}

type node struct {
	ID       string            `yaml:"id"`
	Cluster  string            `yaml:"cluster"`
	Metadata map[string]string `yaml:"metadata"` // a Struct: keys sorted, as protojson does
}

type staticResources struct {
	Clusters []cluster `yaml:"clusters"`
}

type cluster struct {
	Name                          string                 `yaml:"name"`
	Type                          string                 `yaml:"type"`
	ConnectTimeout                string                 `yaml:"connect_timeout"` // a Duration
	LoadAssignment                loadAssignment         `yaml:"load_assignment"`
	TypedExtensionProtocolOptions map[string]httpOptions `yaml:"typed_extension_protocol_options"`
	TransportSocket               *transportSocket       `yaml:"transport_socket,omitempty"`
}

// transportSocket is TLS to the Consul agent's gRPC port.
type transportSocket struct {
	Name        string             `yaml:"name"`
	TypedConfig upstreamTLSContext `yaml:"typed_config"`
}

// upstreamTLSContext is an Any holding UpstreamTlsContext.
type upstreamTLSContext struct {
	Type             string           `yaml:"@type"`
	CommonTLSContext commonTLSContext `yaml:"common_tls_context"`
	SNI              string           `yaml:"sni,omitempty"`
}

type commonTLSContext struct {
	ValidationContext validationContext `yaml:"validation_context"`
}

type validationContext struct {
	TrustedCA                 dataSource   `yaml:"trusted_ca"`
	MatchTypedSubjectAltNames []sanMatcher `yaml:"match_typed_subject_alt_names,omitempty"`
}

type dataSource struct {
	InlineString string `yaml:"inline_string"`
}

type sanMatcher struct {
	SANType string        `yaml:"san_type"`
	Matcher stringMatcher `yaml:"matcher"`
}

type stringMatcher struct {
	Exact string `yaml:"exact"`
}

type loadAssignment struct {
	ClusterName string     `yaml:"cluster_name"`
	Endpoints   []locality `yaml:"endpoints"`
}

type locality struct {
	LbEndpoints []lbEndpoint `yaml:"lb_endpoints"`
}

type lbEndpoint struct {
	Endpoint endpoint `yaml:"endpoint"`
}

type endpoint struct {
	Address address `yaml:"address"`
}

type address struct {
	SocketAddress socketAddress `yaml:"socket_address"`
}

type socketAddress struct {
	Address   string `yaml:"address"`
	PortValue int    `yaml:"port_value"`
}

// httpOptions is an Any holding HttpProtocolOptions with HTTP/2.
type httpOptions struct {
	Type               string `yaml:"@type"`
	ExplicitHTTPConfig struct {
		HTTP2ProtocolOptions struct{} `yaml:"http2_protocol_options"`
	} `yaml:"explicit_http_config"`
}

type dynamicResources struct {
	LdsConfig configSource `yaml:"lds_config"`
	CdsConfig configSource `yaml:"cds_config"`
	AdsConfig apiSource    `yaml:"ads_config"`
}

type configSource struct {
	Ads                 struct{} `yaml:"ads"`
	InitialFetchTimeout string   `yaml:"initial_fetch_timeout"` // a Duration
	ResourceAPIVersion  string   `yaml:"resource_api_version"`
}

type apiSource struct {
	APIType             string        `yaml:"api_type"`
	TransportAPIVersion string        `yaml:"transport_api_version"`
	GrpcServices        []grpcService `yaml:"grpc_services,omitempty"` // the login sidecar's with ACLs (Config.TokenFromLogin)
}

type grpcService struct {
	EnvoyGrpc       grpcCluster `yaml:"envoy_grpc"`
	InitialMetadata []header    `yaml:"initial_metadata"`
}

type grpcCluster struct {
	ClusterName string `yaml:"cluster_name"`
}

type header struct {
	Key   string `yaml:"key"`
	Value string `yaml:"value,omitempty"` // proto3 JSON leaves an empty string out
}

type statsConfig struct {
	StatsTags         []statsTag `yaml:"stats_tags"`
	UseAllDefaultTags bool       `yaml:"use_all_default_tags"` // a BoolValue
}

type statsTag struct {
	TagName    string `yaml:"tag_name"`
	Regex      string `yaml:"regex,omitempty"`
	FixedValue string `yaml:"fixed_value,omitempty"`
}

type layeredRuntime struct {
	Layers []runtimeLayer `yaml:"layers"`
}

type runtimeLayer struct {
	Name        string         `yaml:"name"`
	StaticLayer map[string]int `yaml:"static_layer"` // a Struct
}

type admin struct {
	AccessLog []accessLog `yaml:"access_log"`
	Address   address     `yaml:"address"`
}

type accessLog struct {
	Name        string  `yaml:"name"`
	TypedConfig fileLog `yaml:"typed_config"`
}

// fileLog is an Any holding FileAccessLog.
type fileLog struct {
	Type string `yaml:"@type"`
	Path string `yaml:"path"`
}
