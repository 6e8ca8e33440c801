//go:build tools

// The reference CNI plugins the local cluster chains meshlet-cni after,
// built by `make build` at the version go.mod pins (Debian's 1.1.1 bridge
// fails CHECK on routes without a gateway); portmap too, for the kind node
// image (test/e2e/kind/nodeimage), whose kube-router conflist chains it.
package meshlet

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)
