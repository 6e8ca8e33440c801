package contract

import (
	"encoding/json"
	"errors"
	"strings"
)

// Data plane envoy on a Consul with ACLs: Envoy must present its pod's own
// login token to the Consul agent's xDS server, which reads it only from
// the gRPC metadata x-consul-token of the ADS stream. The webhook cannot
// know the token, so the bootstrap comes in two parts (docs/identity.md):
// the webhook's, inline in Envoy's --config-yaml, without the ADS stream's
// gRPC service; and the login sidecar's, a file holding only that gRPC
// service with the token, which Envoy reads with -c. Envoy loads the file
// first and merges --config-yaml into it.
const (
	// EnvoyLocalAgentCluster is the bootstrap's cluster of the node's
	// Consul agent (Consul's name for it).
	EnvoyLocalAgentCluster = "local_agent"
	// ConsulTokenHeader is the gRPC metadata Consul's xDS server reads the
	// ACL token from.
	ConsulTokenHeader = "x-consul-token"
	// EnvoyADSFile is the file the login sidecar writes on the sidecars'
	// LoginDir, readable by the proxy's UID only. .json: Envoy picks its
	// parser by the extension.
	EnvoyADSFile = LoginDir + "/envoy-ads.json"
	// EnvoyAdminPort is Envoy's admin listener, on the pod's loopback.
	EnvoyAdminPort = 19000
)

// LoginDir is where the sidecars' in-memory login volume is mounted, in
// the sidecars alone (data plane consul: its CA and token; envoy: the
// login sidecar's file).
const LoginDir = "/consul/login"

// EnvoyADSBootstrap is the login sidecar's part of Envoy's bootstrap: the
// ADS stream's gRPC service to the Consul agent's cluster, carrying token.
func EnvoyADSBootstrap(token string) ([]byte, error) {
	// Envoy refuses these in a header value; a token never holds them.
	if token == "" || strings.ContainsAny(token, "\x00\r\n") {
		return nil, errors.New("the ACL token for Envoy's ADS stream is empty or holds NUL, CR or LF")
	}
	type header struct {
		Key   string `json:"key"`
		Value string `json:"value"`
	}
	type grpcService struct {
		EnvoyGrpc struct {
			ClusterName string `json:"cluster_name"`
		} `json:"envoy_grpc"`
		InitialMetadata []header `json:"initial_metadata"`
	}
	var g grpcService
	g.EnvoyGrpc.ClusterName = EnvoyLocalAgentCluster
	g.InitialMetadata = []header{{Key: ConsulTokenHeader, Value: token}}
	doc := map[string]any{"dynamic_resources": map[string]any{"ads_config": map[string]any{"grpc_services": []grpcService{g}}}}
	return json.Marshal(doc)
}
