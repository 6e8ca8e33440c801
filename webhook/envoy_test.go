package webhook

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/test/golden"
)

// The `update` flag (-update rewrites golden files) is defined in
// mutate_test.go and shared by the package's golden tests.

// envoyConsulFixture is `consul connect envoy -bootstrap` for the proxy
// envoyCaptured describes; docs/envoy-bootstrap.md says how it was made.
const envoyConsulFixture = "testdata/envoy-consul-bootstrap.json"

// envoyCaptured is the proxy the fixture was captured for, with the
// literal values Consul saw.
func envoyCaptured() EnvoyBootstrap {
	return EnvoyBootstrap{
		ProxyID:       "default_web-abc-sidecar-proxy",
		ServiceName:   "web",
		AgentHost:     "10.244.0.1",
		AgentGRPCPort: 8502,
		AdminBind:     "127.0.0.1",
		AdminPort:     19000,
		Datacenter:    "dc1",
	}
}

// envoyInPod is the same proxy as the webhook describes it: what kubelet
// knows only at container start is a $(VAR) reference.
func envoyInPod() EnvoyBootstrap {
	b := envoyCaptured()
	b.ProxyID = "$(PROXY_ID)"
	b.AgentHost = "$(HOST_IP)"
	return b
}

// envoyPodEnv is what kubelet would expand envoyInPod's references to on
// the capture's node.
var envoyPodEnv = map[string]string{
	"PROXY_ID": "default_web-abc-sidecar-proxy",
	"HOST_IP":  "10.244.0.1",
}

func envoyYAML(t *testing.T, b EnvoyBootstrap) string {
	t.Helper()
	y, err := b.YAML()
	if err != nil {
		t.Fatalf("YAML(): %v", err)
	}
	return y
}

var envoyGoldenCases = []struct {
	name string
	in   func() EnvoyBootstrap
}{
	{"default", envoyInPod},
	{"tenancy", func() EnvoyBootstrap {
		b := envoyInPod()
		b.Namespace, b.Partition = "team-a", "part-1"
		return b
	}},
	{"admin-port", func() EnvoyBootstrap {
		b := envoyInPod()
		b.AdminPort = 19001
		return b
	}},
	{"token", func() EnvoyBootstrap {
		b := envoyInPod()
		b.Token = "$(CONSUL_ACL_TOKEN)"
		return b
	}},
}

func TestEnvoyBootstrapGolden(t *testing.T) {
	for _, tc := range envoyGoldenCases {
		t.Run(tc.name, func(t *testing.T) {
			got := envoyYAML(t, tc.in())
			golden.Check(t, "envoy-"+tc.name+".golden", []byte(got))
		})
	}
}

// envoyAbsent stands for a field one side does not print.
type envoyAbsentT struct{}

var envoyAbsent = envoyAbsentT{}

// envoyConsulDifferences is every way YAML() may differ from Consul's
// output. Each entry must match exactly what is found at its path (so a
// change on either side still shows), and must still be needed.
//
// Not listed, because not a difference: Consul spells three keys of the
// local_agent cluster in lowerCamelCase (loadAssignment, clusterName,
// lbEndpoints) where we use the proto names. Proto JSON parsers accept
// both for the same field, so keys are compared after envoySnakeKeys.
var envoyConsulDifferences = []struct {
	path   string
	consul any  // what Consul prints at path
	ours   any  // what YAML() prints at path
	wrap   bool // instead: Consul prints one object where we print a one-element list, compared element-wise
	reason string
}{
	{
		path:   "static_resources.clusters[0].ignore_health_on_host_removal",
		consul: false, ours: envoyAbsent,
		reason: "false is the field's default, which proto JSON leaves out; Consul prints it only so that " +
			"Envoy versions that guessed the API version from the fields saw a v3-only field",
	},
	{
		path: "dynamic_resources.ads_config.grpc_services",
		wrap: true,
		reason: "grpc_services is a repeated field: Envoy's parser takes Consul's single object as a " +
			"one-element list, protojson (and the proto JSON mapping) wants the list",
	},
	{
		path:   "dynamic_resources.ads_config.grpc_services[0].initial_metadata[0].value",
		consul: "", ours: envoyAbsent,
		reason: "no ACL token: \"\" is the field's default, which proto JSON leaves out; " +
			"Envoy still sends x-consul-token with an empty value",
	},
}

// TestEnvoyBootstrapMatchesConsul compares, field by field, YAML() for the
// captured proxy with what Consul printed for it.
func TestEnvoyBootstrapMatchesConsul(t *testing.T) {
	consul := envoyReadConsulFixture(t)
	ours := envoyGeneric(t, envoyYAML(t, envoyCaptured()))
	diffs, unused := envoyCompareWithConsul(consul, ours)
	for _, d := range diffs {
		t.Errorf("differs from Consul's output: %s", d)
	}
	for _, p := range unused {
		t.Errorf("documented difference at %s no longer occurs: drop it from envoyConsulDifferences", p)
	}
}

// TestEnvoyBootstrapConsulComparisonBites: the comparison reports the path
// of any field that differs, including inside documented differences.
func TestEnvoyBootstrapConsulComparisonBites(t *testing.T) {
	cases := []struct {
		name string
		edit func(*EnvoyBootstrap)
		want []string // paths reported
	}{
		{"admin port", func(b *EnvoyBootstrap) { b.AdminPort = 19001 },
			[]string{"admin.address.socket_address.port_value"}},
		{"agent address", func(b *EnvoyBootstrap) { b.AgentHost = "10.244.0.2" },
			[]string{"static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"}},
		{"no datacenter", func(b *EnvoyBootstrap) { b.Datacenter = "" },
			[]string{"stats_config.stats_tags"}},
		{"namespace", func(b *EnvoyBootstrap) { b.Namespace = "ns" },
			[]string{"node.metadata.namespace", "stats_config.stats_tags[27].fixed_value"}},
		{"token (inside a documented difference)", func(b *EnvoyBootstrap) { b.Token = "secret" },
			[]string{"dynamic_resources.ads_config.grpc_services[0].initial_metadata[0].value"}},
	}
	consul := envoyReadConsulFixture(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := envoyCaptured()
			tc.edit(&b)
			diffs, _ := envoyCompareWithConsul(consul, envoyGeneric(t, envoyYAML(t, b)))
			var paths []string
			for _, d := range diffs {
				paths = append(paths, strings.SplitN(d, ":", 2)[0])
			}
			if !reflect.DeepEqual(paths, tc.want) {
				t.Errorf("reported %q, want paths %q", diffs, tc.want)
			}
		})
	}
}

// TestEnvoyBootstrapSameProtoAsConsul: beyond the text, Consul's output and
// ours are the same Bootstrap message once Consul's single grpc_services
// object is put in a list, which is also the only thing protojson refuses
// in Consul's output.
func TestEnvoyBootstrapSameProtoAsConsul(t *testing.T) {
	raw, err := os.ReadFile(envoyConsulFixture)
	if err != nil {
		t.Fatal(err)
	}
	var asIs bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(raw, &asIs); err == nil {
		t.Error("protojson accepted Consul's grpc_services object; the wrap entry of envoyConsulDifferences is wrong")
	}

	var tree map[string]any
	if err := json.Unmarshal(raw, &tree); err != nil {
		t.Fatal(err)
	}
	ads := tree["dynamic_resources"].(map[string]any)["ads_config"].(map[string]any)
	ads["grpc_services"] = []any{ads["grpc_services"]}
	fixed, err := json.Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	var consul bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(fixed, &consul); err != nil {
		t.Fatalf("Consul's output, grpc_services in a list: %v", err)
	}
	ours := envoyParse(t, envoyYAML(t, envoyCaptured()))
	if !proto.Equal(&consul, ours) {
		t.Errorf("not the same Bootstrap:\nConsul: %v\nours:   %v", &consul, ours)
	}
}

// TestEnvoyBootstrapValidates: what Envoy gets after kubelet's expansion
// parses strictly into Envoy's Bootstrap and passes Envoy's validation
// rules, and is what YAML() renders from the literal values.
func TestEnvoyBootstrapValidates(t *testing.T) {
	for _, tc := range envoyGoldenCases {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"CONSUL_ACL_TOKEN": "0b3e0ce3-1b4d-4a4e-9d5c-3d1b1c6f3f42"}
			for k, v := range envoyPodEnv {
				env[k] = v
			}
			bs := envoyParse(t, envoyKubeletExpand(envoyYAML(t, tc.in()), env))
			if err := bs.ValidateAll(); err != nil {
				t.Fatalf("ValidateAll: %v", err)
			}

			literal := tc.in()
			literal.ProxyID, literal.AgentHost = env["PROXY_ID"], env["HOST_IP"]
			if literal.Token != "" {
				literal.Token = env["CONSUL_ACL_TOKEN"]
			}
			if want := envoyParse(t, envoyYAML(t, literal)); !proto.Equal(bs, want) {
				t.Errorf("expanded bootstrap differs from the one rendered with the values:\ngot:  %v\nwant: %v", bs, want)
			}
		})
	}
}

// TestEnvoyBootstrapValidationBites: the parse-and-validate check of
// TestEnvoyBootstrapValidates refuses broken bootstraps.
func TestEnvoyBootstrapValidationBites(t *testing.T) {
	good := envoyKubeletExpand(envoyYAML(t, envoyInPod()), envoyPodEnv)
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

// TestEnvoyBootstrapKeepsVarRefs: the $(VAR) references reach the args as
// they are, for kubelet to expand, and nothing else looks like one.
func TestEnvoyBootstrapKeepsVarRefs(t *testing.T) {
	y := envoyYAML(t, envoyInPod())
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
	bs := envoyParse(t, envoyKubeletExpand(y, map[string]string{"PROXY_ID": "1e3", "HOST_IP": "fd00::1"}))
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

func TestEnvoyBootstrapRejectsBadInput(t *testing.T) {
	cases := []struct {
		name string
		edit func(*EnvoyBootstrap)
		want string
	}{
		{"no proxy id", func(b *EnvoyBootstrap) { b.ProxyID = "" }, "ProxyID is empty"},
		{"no service", func(b *EnvoyBootstrap) { b.ServiceName = "" }, "ServiceName is empty"},
		{"agent hostname", func(b *EnvoyBootstrap) { b.AgentHost = "consul.local" }, `AgentHost "consul.local"`},
		{"admin partial ref", func(b *EnvoyBootstrap) { b.AdminBind = "$(POD_IP):1" }, `AdminBind "$(POD_IP):1"`},
		{"grpc port 0", func(b *EnvoyBootstrap) { b.AgentGRPCPort = 0 }, "AgentGRPCPort 0"},
		{"admin port too big", func(b *EnvoyBootstrap) { b.AdminPort = 65536 }, "AdminPort 65536"},
		{"escaped ref", func(b *EnvoyBootstrap) { b.Token = "$$(T)" }, "Token"},
		{"not UTF-8", func(b *EnvoyBootstrap) { b.Datacenter = "dc\xc3" }, `Datacenter "dc\xc3" is not valid UTF-8`},
		{"token with a line break", func(b *EnvoyBootstrap) { b.Token = "a\r\nX-Other: b" }, "NUL, CR or LF"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := envoyInPod()
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

// envoyKubeletExpand does what kubelet does to a container's args: $(NAME)
// becomes NAME's value when env has it and stays as it is otherwise; $$
// becomes $.
func envoyKubeletExpand(s string, env map[string]string) string {
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

// envoyParse reads a bootstrap the strict way: unknown fields and unknown
// typed configs are errors.
func envoyParse(t *testing.T, y string) *bootstrapv3.Bootstrap {
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

func envoyReadConsulFixture(t *testing.T) any {
	t.Helper()
	raw, err := os.ReadFile(envoyConsulFixture)
	if err != nil {
		t.Fatalf("%v (docs/envoy-bootstrap.md says how to capture it)", err)
	}
	return envoySnakeKeys(envoyGeneric(t, string(raw)))
}

// envoyGeneric parses YAML or JSON into maps, slices and float64s.
func envoyGeneric(t *testing.T, y string) any {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatalf("YAML to JSON: %v", err)
	}
	var v any
	if err := json.Unmarshal(js, &v); err != nil {
		t.Fatalf("JSON: %v", err)
	}
	return v
}

var envoyCamelKey = regexp.MustCompile(`^[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+$`)

// envoySnakeKeys renames lowerCamelCase keys to their proto names. Only
// plain identifiers are touched: keys such as a typed config's full type
// name are not field names.
func envoySnakeKeys(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			if envoyCamelKey.MatchString(k) {
				k = regexp.MustCompile(`[A-Z]`).ReplaceAllStringFunc(k, func(c string) string {
					return "_" + strings.ToLower(c)
				})
			}
			out[k] = envoySnakeKeys(e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = envoySnakeKeys(e)
		}
		return out
	}
	return v
}

// envoyCompareWithConsul returns "path: what differs" for every difference
// envoyConsulDifferences does not document, and the documented paths that
// did not occur.
func envoyCompareWithConsul(consul, ours any) (diffs, unused []string) {
	used := map[string]bool{}
	diffs = envoyDiff("", consul, ours, used)
	for _, d := range envoyConsulDifferences {
		if !used[d.path] {
			unused = append(unused, d.path)
		}
	}
	return diffs, unused
}

func envoyDiff(path string, consul, ours any, used map[string]bool) []string {
	for _, d := range envoyConsulDifferences {
		if d.path != path {
			continue
		}
		if d.wrap {
			if l, ok := ours.([]any); ok && len(l) == 1 {
				if _, isObj := consul.(map[string]any); isObj {
					used[path] = true
					return envoyDiff(path+"[0]", consul, l[0], used)
				}
			}
		} else if reflect.DeepEqual(consul, d.consul) && reflect.DeepEqual(ours, d.ours) {
			used[path] = true
			return nil
		}
		// Not as documented: report it like any other difference.
	}

	cm, cIsMap := consul.(map[string]any)
	om, oIsMap := ours.(map[string]any)
	if cIsMap && oIsMap {
		keys := map[string]bool{}
		for k := range cm {
			keys[k] = true
		}
		for k := range om {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		var out []string
		for _, k := range sorted {
			c, ok := cm[k]
			if !ok {
				c = envoyAbsent
			}
			o, ok := om[k]
			if !ok {
				o = envoyAbsent
			}
			out = append(out, envoyDiff(envoyJoinPath(path, k), c, o, used)...)
		}
		return out
	}

	cl, cIsList := consul.([]any)
	ol, oIsList := ours.([]any)
	if cIsList && oIsList {
		if len(cl) != len(ol) {
			// Element-wise paths would all be off by one after a
			// missing element; the list's path says enough.
			return []string{fmt.Sprintf("%s: Consul has %d elements, ours %d", path, len(cl), len(ol))}
		}
		var out []string
		for i := range cl {
			out = append(out, envoyDiff(fmt.Sprintf("%s[%d]", path, i), cl[i], ol[i], used)...)
		}
		return out
	}

	if reflect.DeepEqual(consul, ours) {
		return nil
	}
	return []string{fmt.Sprintf("%s: Consul %s, ours %s", path, envoyShow(consul), envoyShow(ours))}
}

func envoyJoinPath(path, key string) string {
	if strings.ContainsAny(key, ".[]") {
		return fmt.Sprintf("%s[%q]", path, key)
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func envoyShow(v any) string {
	if v == envoyAbsent {
		return "absent"
	}
	js, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(js)
}
