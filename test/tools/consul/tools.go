//go:build tools

// Package tools pins the Consul agent the local cluster and the e2e tests run
// (server, client agent and the built-in sidecar proxy).
package tools

import _ "github.com/hashicorp/consul"
