//go:build tools

// Package tools pins CoreDNS at the version kubeadm v1.34.4 names (kubeadm
// config images list): the kind node image's coredns image. The local
// cluster's own CoreDNS is test/tools/coredns.
package tools

import _ "github.com/coredns/coredns"
