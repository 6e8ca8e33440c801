package envoybootstrap

// doc builds the bootstrap in the shape of Envoy's proto JSON mapping:
// field names as in Envoy's protos and in their order, so that it reads
// like what Consul prints. Plain structs rather than go-control-plane's
// messages, because those register every Envoy proto when a process
// starts: megabytes in every meshlet process, the proxy's included. The
// tests hold it to Envoy's schema instead: they parse the result strictly
// with go-control-plane, run Envoy's validation rules on it (inside the
// Any fields too) and compare it with protojson's rendering of the parsed
// message, byte for byte.
func (c Config) doc() document {
	d := document{
		Node: node{
			ID:      c.ProxyID,
			Cluster: c.ServiceName,
			// The Consul agent reads these to find the proxy's registration.
			Metadata: map[string]string{
				"namespace": orDefault(c.Namespace),
				"partition": orDefault(c.Partition),
			},
		},
		StaticResources: staticResources{Clusters: []cluster{{
			Name:           localAgentCluster,
			Type:           "STATIC",
			ConnectTimeout: "1s",
			LoadAssignment: loadAssignment{
				ClusterName: localAgentCluster,
				Endpoints: []locality{{LbEndpoints: []lbEndpoint{{
					Endpoint: endpoint{Address: addressOf(c.AgentHost, c.AgentGRPCPort)},
				}}}},
			},
			// The Consul agent serves xDS over gRPC, which needs HTTP/2 on the
			// cluster.
			TypedExtensionProtocolOptions: map[string]httpOptions{
				httpOptionsType: {Type: typeURL + httpOptionsType},
			},
		}}},
		DynamicResources: dynamicResources{
			LdsConfig: adsSource(),
			CdsConfig: adsSource(),
			AdsConfig: apiSource{
				APIType:             "DELTA_GRPC",
				TransportAPIVersion: "V3",
				GrpcServices: []grpcService{{
					EnvoyGrpc: grpcCluster{ClusterName: localAgentCluster},
					// Sent even when empty, as Consul does: the Consul agent then
					// treats the stream as anonymous.
					InitialMetadata: []header{{Key: tokenHeader, Value: c.Token}},
				}},
			},
		},
		StatsConfig: statsConfig{StatsTags: c.statsTags(), UseAllDefaultTags: true},
		LayeredRuntime: layeredRuntime{Layers: []runtimeLayer{{
			Name: "base",
			// Regexes from Consul's config entries (routes, intentions)
			// can exceed Envoy's default RE2 program size limit, which
			// would make Envoy reject the whole listener; Consul raises
			// the limit.
			StaticLayer: map[string]int{"re2.max_program_size.error_level": 1048576},
		}}},
		Admin: admin{
			AccessLog: []accessLog{{
				Name: "envoy.access_loggers.file",
				// Consul's default: the admin API's requests are not
				// logged.
				TypedConfig: fileLog{Type: typeURL + fileLogType, Path: "/dev/null"},
			}},
			Address: addressOf(c.AdminBind, c.AdminPort),
		},
	}
	if c.AgentCAPEM != "" {
		d.StaticResources.Clusters[0].TransportSocket = c.agentTLS()
	}
	if c.TokenFromLogin {
		// Envoy appends a repeated field when it merges --config-yaml into
		// the login sidecar's file: the gRPC service must come from one
		// side only, the side that knows the token.
		d.DynamicResources.AdsConfig.GrpcServices = nil
	}
	return d
}

// agentTLS verifies the Consul agent's gRPC TLS certificate with the CA
// bundle, as Consul's bootstrap does, and, given a server name, sends it
// as SNI and requires it among the certificate's DNS names (Envoy checks
// no name otherwise).
func (c Config) agentTLS() *transportSocket {
	t := upstreamTLSContext{Type: typeURL + upstreamTLSType,
		CommonTLSContext: commonTLSContext{ValidationContext: validationContext{TrustedCA: dataSource{InlineString: c.AgentCAPEM}}}}
	if c.AgentServerName != "" {
		t.SNI = c.AgentServerName
		t.CommonTLSContext.ValidationContext.MatchTypedSubjectAltNames = []sanMatcher{{SANType: "DNS", Matcher: stringMatcher{Exact: c.AgentServerName}}}
	}
	return &transportSocket{Name: "tls", TypedConfig: t}
}

// Type URLs of the Any fields, and the extension name Envoy looks the
// HTTP options up by (its type name).
const (
	typeURL         = "type.googleapis.com/"
	httpOptionsType = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	fileLogType     = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
	upstreamTLSType = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
)

func addressOf(host string, port int) address {
	return address{SocketAddress: socketAddress{Address: host, PortValue: port}}
}

// adsSource: listeners and clusters come over the ADS stream. A zero
// initial fetch timeout makes Envoy wait for them however long the Consul agent
// takes, instead of starting with none.
func adsSource() configSource {
	return configSource{InitialFetchTimeout: "0s", ResourceAPIVersion: "V3"}
}
