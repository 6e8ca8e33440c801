package envoybootstrap

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/test/golden"
)

// captured is the proxy the fixture was captured for, with the literal
// values Consul saw.
func captured() Config {
	return Config{
		ProxyID:       "default_web-abc-sidecar-proxy",
		ServiceName:   "web",
		AgentHost:     "10.244.0.1",
		AgentGRPCPort: 8502,
		AdminBind:     "127.0.0.1",
		AdminPort:     19000,
		Datacenter:    "dc1",
	}
}

// inPod is the same proxy as the webhook describes it: what kubelet knows
// only at container start is a $(VAR) reference.
func inPod() Config {
	b := captured()
	b.ProxyID = "$(PROXY_ID)"
	b.AgentHost = "$(HOST_IP)"
	return b
}

// podEnv is what kubelet would expand inPod's references to on the capture's
// node.
var podEnv = map[string]string{
	"PROXY_ID": "default_web-abc-sidecar-proxy",
	"HOST_IP":  "10.244.0.1",
}

func yamlOf(t *testing.T, b Config) string {
	t.Helper()
	y, err := b.YAML()
	if err != nil {
		t.Fatalf("YAML(): %v", err)
	}
	return y
}

var goldenCases = []struct {
	name string
	in   func() Config
}{
	{"default", inPod},
	{"tenancy", func() Config {
		b := inPod()
		b.Namespace, b.Partition = "team-a", "part-1"
		return b
	}},
	{"admin-port", func() Config {
		b := inPod()
		b.AdminPort = 19001
		return b
	}},
	{"token", func() Config {
		b := inPod()
		b.Token = "$(CONSUL_ACL_TOKEN)"
		return b
	}},
	{"tls", func() Config {
		b := inPod()
		b.AgentGRPCPort, b.AgentCAPEM = 8503, testCA()
		return b
	}},
	{"tls-login", inPodSecure},
}

// inPodSecure is the pod's bootstrap on a Consul with ACLs and TLS, as the
// webhook renders it for data plane envoy with an auth method: TLS to
// 8503, a server name, the token left to the login sidecar.
func inPodSecure() Config {
	b := inPod()
	b.AgentGRPCPort, b.AgentCAPEM, b.AgentServerName, b.TokenFromLogin = 8503, testCA(), "client.dc1.consul", true
	return b
}

// testCA is a CA made for these tests (testdata/agent-ca.pem).
func testCA() string {
	pem, err := os.ReadFile("testdata/agent-ca.pem")
	if err != nil {
		panic(err)
	}
	return string(pem)
}

func TestGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			got := yamlOf(t, tc.in())
			golden.Check(t, tc.name+".golden", []byte(got))
		})
	}
}

// TestValidates: what Envoy gets after kubelet's expansion parses strictly
// into Envoy's Bootstrap and passes Envoy's validation rules, and is what
// YAML() renders from the literal values.
func TestValidates(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"CONSUL_ACL_TOKEN": "0b3e0ce3-1b4d-4a4e-9d5c-3d1b1c6f3f42"}
			for k, v := range podEnv {
				env[k] = v
			}
			bs := parse(t, kubeletExpand(yamlOf(t, tc.in()), env))
			if err := bs.ValidateAll(); err != nil {
				t.Fatalf("ValidateAll: %v", err)
			}

			literal := tc.in()
			literal.ProxyID, literal.AgentHost = env["PROXY_ID"], env["HOST_IP"]
			if literal.Token != "" {
				literal.Token = env["CONSUL_ACL_TOKEN"]
			}
			if want := parse(t, yamlOf(t, literal)); !proto.Equal(bs, want) {
				t.Errorf("expanded bootstrap differs from the one rendered with the values:\ngot:  %v\nwant: %v", bs, want)
			}
		})
	}
}

// TestValidationBites: the parse-and-validate check of TestValidates refuses
// broken bootstraps.
func TestValidationBites(t *testing.T) {
	good := kubeletExpand(yamlOf(t, inPod()), podEnv)
	cases := []struct {
		name, old, new string
		stage          string // where it must fail: unmarshal or validate
	}{
		{"port out of range", "port_value: 8502", "port_value: 70000", "validate"},
		{"negative timeout", "connect_timeout: 1s", "connect_timeout: -1s", "validate"},
		{"unknown field", "use_all_default_tags: true", "use_all_default_tags: true\n  no_such_field: 1", "unmarshal"},
		{"unknown typed config", "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
			"type.googleapis.com/envoy.extensions.access_loggers.nope.v3.Nope", "unmarshal"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(good, tc.old) {
				t.Fatalf("bootstrap has no %q to break", tc.old)
			}
			broken := strings.Replace(good, tc.old, tc.new, 1)
			js, err := yaml.YAMLToJSON([]byte(broken))
			if err != nil {
				t.Fatal(err)
			}
			var bs bootstrapv3.Bootstrap
			err = protojson.UnmarshalOptions{DiscardUnknown: false}.Unmarshal(js, &bs)
			switch {
			case tc.stage == "unmarshal" && err == nil:
				t.Fatal("protojson accepted it")
			case tc.stage == "unmarshal":
				return
			case err != nil:
				t.Fatalf("unmarshal: %v", err)
			}
			if err := bs.ValidateAll(); err == nil {
				t.Fatal("ValidateAll accepted it")
			}
		})
	}
}

// TestKeepsVarRefs: the $(VAR) references reach the args as they are, for
// kubelet to expand, and nothing else looks like one.
func TestKeepsVarRefs(t *testing.T) {
	y := yamlOf(t, inPod())
	for _, want := range []string{`id: "$(PROXY_ID)"`, `address: "$(HOST_IP)"`} {
		if !strings.Contains(y, want) {
			t.Errorf("YAML lacks %s", want)
		}
	}
	if strings.Contains(y, "$$") {
		t.Error("YAML contains $$, which kubelet rewrites to $")
	}
	refs := regexp.MustCompile(`\$\(([^)]*)\)`).FindAllStringSubmatch(y, -1)
	var names []string
	for _, r := range refs {
		names = append(names, r[1])
	}
	if want := []string{"PROXY_ID", "HOST_IP"}; !reflect.DeepEqual(names, want) {
		t.Errorf("$(VAR) references %q, want exactly %q", names, want)
	}

	// The references are quoted, so values YAML would read as something
	// else stay strings.
	bs := parse(t, kubeletExpand(y, map[string]string{"PROXY_ID": "1e3", "HOST_IP": "fd00::1"}))
	if err := bs.ValidateAll(); err != nil {
		t.Fatalf("ValidateAll: %v", err)
	}
	if got := bs.GetNode().GetId(); got != "1e3" {
		t.Errorf("node.id = %q, want 1e3", got)
	}
	addr := bs.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
	if addr != "fd00::1" {
		t.Errorf("agent address = %q, want fd00::1", addr)
	}
}

func TestRejectsBadInput(t *testing.T) {
	cases := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no proxy id", func(b *Config) { b.ProxyID = "" }, "ProxyID is empty"},
		{"no service", func(b *Config) { b.ServiceName = "" }, "ServiceName is empty"},
		{"agent hostname", func(b *Config) { b.AgentHost = "consul.local" }, `AgentHost "consul.local"`},
		{"admin partial ref", func(b *Config) { b.AdminBind = "$(POD_IP):1" }, `AdminBind "$(POD_IP):1"`},
		{"grpc port 0", func(b *Config) { b.AgentGRPCPort = 0 }, "AgentGRPCPort 0"},
		{"admin port too big", func(b *Config) { b.AdminPort = 65536 }, "AdminPort 65536"},
		{"escaped ref", func(b *Config) { b.Token = "$$(T)" }, "Token"},
		{"not UTF-8", func(b *Config) { b.Datacenter = "dc\xc3" }, `Datacenter "dc\xc3" is not valid UTF-8`},
		{"token with a line break", func(b *Config) { b.Token = "a\r\nX-Other: b" }, "NUL, CR or LF"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := inPod()
			tc.edit(&b)
			y, err := b.YAML()
			if err == nil {
				t.Fatalf("accepted:\n%s", y)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// kubeletExpand does what kubelet does to a container's args: $(NAME)
// becomes NAME's value when env has it and stays as it is otherwise; $$
// becomes $.
func kubeletExpand(s string, env map[string]string) string {
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			sb.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			sb.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				sb.WriteByte('$')
				continue
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				sb.WriteString(v)
			} else {
				sb.WriteString("$(" + name + ")")
			}
			i += 2 + end
		default:
			sb.WriteByte('$')
		}
	}
	return sb.String()
}

// parse reads a bootstrap the strict way: unknown fields and unknown
// typed configs are errors.
func parse(t *testing.T, y string) *bootstrapv3.Bootstrap {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatalf("YAML to JSON: %v", err)
	}
	var bs bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, &bs); err != nil {
		t.Fatalf("into envoy.config.bootstrap.v3.Bootstrap: %v", err)
	}
	return &bs
}
