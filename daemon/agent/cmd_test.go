package agent

import (
	"io"
	"strings"
	"testing"
	"time"
)

// TestFlagsRefuseBadInput: every bad value is named with what was
// expected, before anything starts.
func TestFlagsRefuseBadInput(t *testing.T) {
	for _, env := range []string{"HOST_IP", "CONSUL_HTTP_ADDR", "NODE_NAME", "POD_NAMESPACE"} {
		t.Setenv(env, "")
	}
	base := []string{"-node-name", "n1", "-http-addr", "10.0.0.1:8500", "-namespace", "meshlet"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-workers", "0"}, "-workers 0: expected at least 1"},
		{[]string{"-resync-interval", "1ms"}, "-resync-interval 1ms: expected at least 100ms"},
		{[]string{"-listen", "9402"}, `-listen "9402": expected host:port`},
		{[]string{"-cni-bin-dir", "opt/cni/bin"}, `-cni-bin-dir "opt/cni/bin": expected an absolute path`},
		{[]string{"-cni-token-ttl", "1m"}, "-cni-token-ttl 1m0s: expected at least 10m"},
		{[]string{"-cni-agent-socket", "cni.sock"}, `-cni-agent-socket "cni.sock": expected an absolute path`},
		{[]string{"-repair-mode", "sometimes"}, `repair mode "sometimes": expected auto, repair, delete or off`},
		{[]string{"-repair-interval", "10ms"}, "-repair-interval 10ms: expected at least 1s"},
		{[]string{"-iptables-mode", "nftables"}, `-iptables-mode "nftables": expected auto, nft or legacy`},
		{[]string{"-node-name", ""}, "-node-name is empty"},
		{[]string{"-consul-cross-namespace-acl-policy", "cross-namespace-policy"}, "-consul-cross-namespace-acl-policy cross-namespace-policy without -enable-namespaces"},
		{[]string{"-cni-api-server", ""}, "-cni-api-server is empty"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			o, err := flags(append(append([]string{}, base...), tc.args...), io.Discard)
			if err == nil {
				err = o.cfg.validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v: got %v, want an error with %q", tc.args, err, tc.want)
			}
		})
	}
	o, err := flags(append(base, "-cni-api-server", "https://10.0.0.1:6443"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.cfg.validate(); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	// Found by the chart's helper: the default was under the container's
	// /host mount, a path meshlet-cni on the host cannot read.
	if got := o.cfg.CNI.KubeconfigPath; got != "/var/lib/meshlet/meshlet-cni.kubeconfig" {
		t.Fatalf("-cni-kubeconfig defaults to %q, want the host path /var/lib/meshlet/meshlet-cni.kubeconfig", got)
	}
	if o.cfg.ResyncInterval != 5*time.Second || o.cfg.Workers != 4 || !o.cfg.CNI.Enabled || o.cfg.Repair.Mode != "auto" {
		t.Fatalf("defaults changed: %+v", o.cfg)
	}
	if _, err := flags([]string{"-node-name", "n1"}, io.Discard); err == nil || !strings.Contains(err.Error(), "-http-addr is empty") {
		t.Fatalf("no Consul address: %v", err)
	}
}
