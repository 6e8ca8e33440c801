//go:build tools

// Package tools pins kind, which test/e2e/kind/run.sh uses to run the e2e
// suite on a Kubernetes cluster in Docker containers.
package tools

import _ "sigs.k8s.io/kind"
