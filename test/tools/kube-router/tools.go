//go:build tools

// Package tools pins kube-router, the kind node image's default CNI: its
// bridge conflist and its routes between nodes (kube-proxy keeps the
// Services).
package tools

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
