//go:build tools

// Package tools pins helm, used to install and lint meshlet's chart.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
