//go:build tools

// Package tools pins CoreDNS, the local cluster's DNS server (kube-dns).
package tools

import _ "github.com/coredns/coredns"
