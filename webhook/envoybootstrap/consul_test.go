package envoybootstrap

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
)

// consulFixture is `consul connect envoy -bootstrap` for the proxy captured
// describes; docs/envoy-bootstrap.md says how it was made.
const consulFixture = "testdata/consul-bootstrap.json"

// absent stands for a field one side does not print.
type absentT struct{}

var absent = absentT{}

// consulDifferences is every way YAML() may differ from Consul's
// output. Each entry must match exactly what is found at its path (so a
// change on either side still shows), and must still be needed.
//
// Not listed, because not a difference: Consul spells three keys of the
// local_agent cluster in lowerCamelCase (loadAssignment, clusterName,
// lbEndpoints) where we use the proto names. Proto JSON parsers accept
// both for the same field, so keys are compared after snakeKeys.
type consulDifference struct {
	path   string
	consul any  // what Consul prints at path
	ours   any  // what YAML() prints at path
	wrap   bool // instead: Consul prints one object where we print a one-element list, compared element-wise
	reason string
}

var consulDifferences = []consulDifference{
	{
		path:   "static_resources.clusters[0].ignore_health_on_host_removal",
		consul: false, ours: absent,
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
		consul: "", ours: absent,
		reason: "no ACL token: \"\" is the field's default, which proto JSON leaves out; " +
			"Envoy still sends x-consul-token with an empty value",
	},
}

// TestMatchesConsul compares, field by field, YAML() for the captured proxy
// with what Consul printed for it.
func TestMatchesConsul(t *testing.T) {
	consul := readConsulFixture(t)
	ours := generic(t, yamlOf(t, captured()))
	diffs, unused := compareWithConsul(consul, ours)
	for _, d := range diffs {
		t.Errorf("differs from Consul's output: %s", d)
	}
	for _, p := range unused {
		t.Errorf("documented difference at %s no longer occurs: drop it from consulDifferences", p)
	}
}

// TestConsulComparisonBites: the comparison reports the path of any field
// that differs, including inside documented differences.
func TestConsulComparisonBites(t *testing.T) {
	cases := []struct {
		name string
		edit func(*Config)
		want []string // paths reported
	}{
		{"admin port", func(b *Config) { b.AdminPort = 19001 },
			[]string{"admin.address.socket_address.port_value"}},
		{"agent address", func(b *Config) { b.AgentHost = "10.244.0.2" },
			[]string{"static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"}},
		{"no datacenter", func(b *Config) { b.Datacenter = "" },
			[]string{"stats_config.stats_tags"}},
		{"namespace", func(b *Config) { b.Namespace = "ns" },
			[]string{"node.metadata.namespace", "stats_config.stats_tags[27].fixed_value"}},
		{"token (inside a documented difference)", func(b *Config) { b.Token = "secret" },
			[]string{"dynamic_resources.ads_config.grpc_services[0].initial_metadata[0].value"}},
	}
	consul := readConsulFixture(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := captured()
			tc.edit(&b)
			diffs, _ := compareWithConsul(consul, generic(t, yamlOf(t, b)))
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

// TestSameProtoAsConsul: beyond the text, Consul's output and ours are the
// same Bootstrap message once Consul's single grpc_services object is put in
// a list, which is also the only thing protojson refuses in Consul's output.
func TestSameProtoAsConsul(t *testing.T) {
	raw, err := os.ReadFile(consulFixture)
	if err != nil {
		t.Fatal(err)
	}
	var asIs bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(raw, &asIs); err == nil {
		t.Error("protojson accepted Consul's grpc_services object; the wrap entry of consulDifferences is wrong")
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
	ours := parse(t, yamlOf(t, captured()))
	if !proto.Equal(&consul, ours) {
		t.Errorf("not the same Bootstrap:\nConsul: %v\nours:   %v", &consul, ours)
	}
}

func readConsulFixture(t *testing.T) any { return readFixture(t, consulFixture) }

func readFixture(t *testing.T, path string) any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (docs/envoy-bootstrap.md says how to capture it)", err)
	}
	return snakeKeys(generic(t, string(raw)))
}

// generic parses YAML or JSON into maps, slices and float64s.
func generic(t *testing.T, y string) any {
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

var camelKey = regexp.MustCompile(`^[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+$`)

// snakeKeys renames lowerCamelCase keys to their proto names. Only
// plain identifiers are touched: keys such as a typed config's full type
// name are not field names.
func snakeKeys(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			if camelKey.MatchString(k) {
				k = regexp.MustCompile(`[A-Z]`).ReplaceAllStringFunc(k, func(c string) string {
					return "_" + strings.ToLower(c)
				})
			}
			out[k] = snakeKeys(e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = snakeKeys(e)
		}
		return out
	}
	return v
}

// compareWithConsul returns "path: what differs" for every difference
// consulDifferences does not document, and the documented paths that
// did not occur.
func compareWithConsul(consul, ours any) (diffs, unused []string) {
	return compareWith(consul, ours, consulDifferences)
}

// compareWith is compareWithConsul with known as the documented
// differences.
func compareWith(consul, ours any, known []consulDifference) (diffs, unused []string) {
	used := map[string]bool{}
	diffs = diff("", consul, ours, known, used)
	for _, d := range known {
		if !used[d.path] {
			unused = append(unused, d.path)
		}
	}
	return diffs, unused
}

func diff(path string, consul, ours any, known []consulDifference, used map[string]bool) []string {
	for _, d := range known {
		if d.path != path {
			continue
		}
		if d.wrap {
			if l, ok := ours.([]any); ok && len(l) == 1 {
				if _, isObj := consul.(map[string]any); isObj {
					used[path] = true
					return diff(path+"[0]", consul, l[0], known, used)
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
				c = absent
			}
			o, ok := om[k]
			if !ok {
				o = absent
			}
			out = append(out, diff(joinPath(path, k), c, o, known, used)...)
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
			out = append(out, diff(fmt.Sprintf("%s[%d]", path, i), cl[i], ol[i], known, used)...)
		}
		return out
	}

	if reflect.DeepEqual(consul, ours) {
		return nil
	}
	return []string{fmt.Sprintf("%s: Consul %s, ours %s", path, show(consul), show(ours))}
}

func joinPath(path, key string) string {
	if strings.ContainsAny(key, ".[]") {
		return fmt.Sprintf("%s[%q]", path, key)
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func show(v any) string {
	if v == absent {
		return "absent"
	}
	js, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(js)
}
