package cni

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/meshlet/meshlet/iptables"
	"github.com/meshlet/meshlet/test/testpki"
)

const prev = `"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.0.0.5/24","interface":0},{"address":"fd00::5/64","interface":0}]}`

func TestParseConf(t *testing.T) {
	tests := []struct {
		name, conf, wantErr string
		requirePrev         bool
	}{
		{"chained", `{"cniVersion":"1.0.0","type":"meshlet-cni","kubeconfig":"/k",` + prev + `}`, "", true},
		{"unchained", `{"cniVersion":"1.0.0","type":"meshlet-cni","kubeconfig":"/k"}`, "must be chained", true},
		{"DEL needs no prevResult", `{"cniVersion":"1.0.0","type":"meshlet-cni","kubeconfig":"/k"}`, "", false},
		{"no kubeconfig", `{"cniVersion":"1.0.0","type":"meshlet-cni",` + prev + `}`, `"kubeconfig" is empty`, true},
		{"bad timeout", `{"cniVersion":"1.0.0","kubeconfig":"/k","pod_lookup_timeout":"soon",` + prev + `}`, `pod_lookup_timeout "soon"`, true},
		{"bad log level", `{"cniVersion":"1.0.0","kubeconfig":"/k","log_level":"loud",` + prev + `}`, `log_level "loud"`, true},
		{"absolute log file", `{"cniVersion":"1.0.0","kubeconfig":"/k","log_file":"/var/log/meshlet-cni.log",` + prev + `}`, "", true},
		{"relative log file", `{"cniVersion":"1.0.0","kubeconfig":"/k","log_file":"logs/cni.log",` + prev + `}`, `log_file "logs/cni.log": expected an absolute path`, true},
		{"absolute agent socket", `{"cniVersion":"1.0.0","kubeconfig":"/k","agent_socket":"/var/run/meshlet/cni.sock",` + prev + `}`, "", true},
		{"relative agent socket", `{"cniVersion":"1.0.0","kubeconfig":"/k","agent_socket":"cni.sock",` + prev + `}`, `agent_socket "cni.sock": expected an absolute path`, true},
		{"not JSON", `{`, "parse network configuration", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConf([]byte(tc.conf), tc.requirePrev)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.lookupTimeout != defaultLookupTimeout || c.LockDir != defaultLockDir {
					t.Errorf("defaults not set: %+v", c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestRuntimeAnnotations(t *testing.T) {
	c, err := parseConf([]byte(`{"cniVersion":"1.0.0","kubeconfig":"/k","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":"b"}},`+prev+`}`), true)
	if err != nil {
		t.Fatal(err)
	}
	if c.RuntimeConfig.PodAnnotations["a"] != "b" {
		t.Errorf("annotations %v", c.RuntimeConfig.PodAnnotations)
	}
	c, err = parseConf([]byte(`{"cniVersion":"1.0.0","kubeconfig":"/k",`+prev+`}`), true)
	if err != nil {
		t.Fatal(err)
	}
	if c.RuntimeConfig.PodAnnotations != nil {
		t.Error("no runtimeConfig must mean: ask the API server")
	}
}

func TestFamilies(t *testing.T) {
	c, err := parseConf([]byte(`{"cniVersion":"1.0.0","kubeconfig":"/k",`+prev+`}`), true)
	if err != nil {
		t.Fatal(err)
	}
	got, err := families(c.PrevResult, "eth0")
	if err != nil || len(got) != 2 || got[0] != iptables.IPv4 || got[1] != iptables.IPv6 {
		t.Errorf("dual-stack: %v %v", got, err)
	}
	got, _ = families(&current.Result{CNIVersion: "1.0.0"}, "eth0")
	if len(got) != 1 || got[0] != iptables.IPv4 {
		t.Errorf("no addresses must still get IPv4 rules: %v", got)
	}
	var none types.Result
	if got, _ := families(none, "eth0"); len(got) != 1 {
		t.Errorf("nil result: %v", got)
	}
}

// TestAddresses: only the IPs of the interface the runtime asked for
// (CNI_IFNAME) in the sandbox are the pod's, for the agent's notice and for
// the families that get rules; an IP naming no interface is taken, as the
// portmap plugin takes it. Without any, the families fail closed.
func TestAddresses(t *testing.T) {
	// eth0 (the cluster network) and net1 (a second network attached by
	// Multus) in the sandbox, after the host's end of eth0's veth.
	const twoNets = `{"cniVersion":"1.0.0","interfaces":[{"name":"veth1"},{"name":"eth0","sandbox":"/var/run/netns/x"},{"name":"net1","sandbox":"/var/run/netns/x"}],` +
		`"ips":[{"address":"169.254.1.1/32","interface":0},{"address":"10.244.0.5/24","interface":1},{"address":"192.168.50.7/24","interface":2},{"address":"fd00:50::7/64","interface":2}]}`
	v4, v6 := iptables.IPv4, iptables.IPv6
	for _, tc := range []struct {
		name, result, ifName string
		fams                 []iptables.Family
		ips                  []string
	}{
		// Only eth0's IP is the pod's address, but net1's IPv6 gets rules
		// too: the rules hold for the whole netns.
		{"the cluster network's interface", twoNets, "eth0", []iptables.Family{v4, v6}, []string{"10.244.0.5"}},
		{"the second network's interface", twoNets, "net1", []iptables.Family{v4, v6}, []string{"192.168.50.7", "fd00:50::7"}},
		{"an interface the result does not hold", twoNets, "net2", []iptables.Family{v4, v6}, nil},
		// Calico's: IPAM's IPs, naming no interface.
		{"IPs naming no interface", `{"cniVersion":"1.0.0","interfaces":[{"name":"cali12345","sandbox":"/var/run/netns/x"}],` +
			`"ips":[{"address":"10.244.0.5/32"},{"address":"fd00::5/128"}]}`, "eth0", []iptables.Family{v4, v6}, []string{"10.244.0.5", "fd00::5"}},
		{"an index outside the interfaces", `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],` +
			`"ips":[{"address":"fd00::5/64","interface":3}]}`, "eth0", []iptables.Family{v6}, []string{"fd00::5"}},
		{"the name, but on the host", `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],` +
			`"ips":[{"address":"fd00::5/64","interface":0}]}`, "eth0", []iptables.Family{v6}, nil},
		{"CNI 0.4.0", `{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"},{"name":"net1","sandbox":"/var/run/netns/x"}],` +
			`"ips":[{"version":"6","address":"fd00::5/64","interface":0},{"version":"4","address":"192.168.50.7/24","interface":1}]}`, "eth0", []iptables.Family{v4, v6}, []string{"fd00::5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v struct{ CNIVersion string }
			if err := json.Unmarshal([]byte(tc.result), &v); err != nil {
				t.Fatal(err)
			}
			c, err := parseConf([]byte(`{"cniVersion":"`+v.CNIVersion+`","kubeconfig":"/k","prevResult":`+tc.result+`}`), true)
			if err != nil {
				t.Fatal(err)
			}
			fams, ips, err := addresses(c.PrevResult, tc.ifName)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(fams, tc.fams) || !slices.Equal(ips, tc.ips) {
				t.Errorf("%s: families %v, IPs %q; want %v, %q", tc.ifName, fams, ips, tc.fams, tc.ips)
			}
			if got, err := families(c.PrevResult, tc.ifName); err != nil || !slices.Equal(got, fams) {
				t.Errorf("families %v, %v; want addresses' %v", got, err, fams)
			}
		})
	}
}

func TestParseArgs(t *testing.T) {
	a, err := parseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=u;OTHER=y")
	if err != nil || a.K8S_POD_NAMESPACE != "ns" || a.K8S_POD_NAME != "p" {
		t.Errorf("%+v %v", a, err)
	}
	if _, err := parseArgs("OTHER=y"); err == nil {
		t.Error("unknown args without IgnoreUnknown accepted")
	}
}

func TestLoadKubeconfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("token", "s3cret\n")
	testCA := testpki.NewCA(t, "test-ca").PEM
	write("ca.crt", testCA)
	kc := func(user string) string {
		return `apiVersion: v1
kind: Config
current-context: c
clusters: [{name: k, cluster: {server: "https://10.0.0.1:6443/", certificate-authority: ca.crt}}]
users: [{name: u, user: ` + user + `}]
contexts: [{name: c, context: {cluster: k, user: u}}]
`
	}
	cl, err := loadKubeconfig(write("token-file.yaml", kc(`{tokenFile: token}`)))
	if err != nil {
		t.Fatal(err)
	}
	if cl.token != "s3cret" || cl.server != "https://10.0.0.1:6443" {
		t.Errorf("token file: token %q server %q", cl.token, cl.server)
	}
	if cl, err = loadKubeconfig(write("token.yaml", kc(`{token: abc}`))); err != nil || cl.token != "abc" {
		t.Errorf("inline token: %v %v", cl, err)
	}
	caData := base64.StdEncoding.EncodeToString([]byte(testCA))
	inline := strings.Replace(kc(`{token: abc}`), "certificate-authority: ca.crt", "certificate-authority-data: "+caData, 1)
	if _, err := loadKubeconfig(write("ca-data.yaml", inline)); err != nil {
		t.Errorf("CA data: %v", err)
	}
	for name, tc := range map[string]struct{ content, want string }{
		"exec":          {kc(`{exec: {command: aws}}`), "exec or auth-provider plugin"},
		"no context":    {strings.Replace(kc(`{token: a}`), "current-context: c", "current-context: other", 1), `context "other" not found`},
		"bad CA":        {strings.Replace(kc(`{token: a}`), "ca.crt", "token", 1), "holds no PEM certificate"},
		"missing token": {kc(`{tokenFile: nope}`), "token file"},
		"not YAML":      {"{{{", "kubeconfig"},
		// Either would send every request without credentials.
		"unknown user": {strings.Replace(kc(`{token: a}`), "user: u}", "user: nobody}", 1), `user "nobody" of context "c" not found in users`},
		"no user":      {strings.Replace(kc(`{token: a}`), "user: u}", `user: ""}`, 1), `context "c" names no user`},
		"user omitted": {strings.Replace(kc(`{token: a}`), ", user: u}", "}", 1), `context "c" names no user`},
	} {
		p := write(name+".yaml", tc.content)
		if _, err := loadKubeconfig(p); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v, want %q and the file %s", name, err, tc.want, p)
		}
	}
	if _, err := loadKubeconfig(filepath.Join(dir, "absent")); err == nil {
		t.Error("missing kubeconfig accepted")
	}
}
