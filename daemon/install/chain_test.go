package install

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/meshlet/meshlet/cni"
	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/golden"
)

var testConfig = InstallConfig{
	KubeconfigPath:  "/var/lib/meshlet/cni/kubeconfig",
	LogFile:         "/var/log/meshlet-cni.log",
	LogLevel:        "info",
	NodeAgentSocket: "/var/run/meshlet/cni.sock",
}

// TestChain chains each testdata/before config, compares the result with
// testdata/after and checks what must hold of every result.
func TestChain(t *testing.T) {
	unchanged := map[string]bool{"chained.conflist": true}
	files, _ := filepath.Glob("testdata/before/*")
	if len(files) == 0 {
		t.Fatal("no testdata/before")
	}
	for _, f := range files {
		base := filepath.Base(f)
		t.Run(base, func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out, changed, err := Chain(raw, isConflist(f), testConfig.Entry())
			if err != nil {
				t.Fatal(err)
			}
			if changed == unchanged[base] {
				t.Errorf("changed = %v", changed)
			}
			if !changed && !bytes.Equal(out, raw) {
				t.Error("unchanged, but out is not the input")
			}
			name := strings.TrimSuffix(base, filepath.Ext(base)) + ".conflist"
			golden.Check(t, filepath.Join("after", name), out)

			list, err := libcni.ConfListFromBytes(out)
			if err != nil {
				t.Fatalf("libcni does not load the result: %v", err)
			}
			last := list.Plugins[len(list.Plugins)-1]
			var conf cni.NetConf
			if err := json.Unmarshal(last.Bytes, &conf); err != nil {
				t.Fatal(err)
			}
			if conf.Type != contract.PluginType || conf.Kubeconfig != testConfig.KubeconfigPath || conf.NodeAgentSocket != testConfig.NodeAgentSocket || !conf.Capabilities[contract.CapabilityPodAnnotations] {
				t.Errorf("last plugin: %s", last.Bytes)
			}
			for _, p := range list.Plugins[:len(list.Plugins)-1] {
				if p.Network.Type == contract.PluginType {
					t.Errorf("a second meshlet-cni entry: %s", p.Bytes)
				}
			}

			again, changed, err := Chain(out, true, testConfig.Entry())
			if err != nil || changed || !bytes.Equal(again, out) {
				t.Errorf("second Chain: changed %v, err %v", changed, err)
			}

			// The other plugins, as written (key order, numbers), and
			// Unchain gives back exactly those.
			want := othersOf(t, raw, isConflist(f))
			if got := othersOf(t, out, true); got != want {
				t.Errorf("other plugins changed:\n got %s\nwant %s", got, want)
			}
			un, changed, err := Unchain(out)
			if err != nil || !changed {
				t.Fatalf("Unchain: changed %v, err %v", changed, err)
			}
			if got := othersOf(t, un, true); got != want {
				t.Errorf("after Unchain:\n got %s\nwant %s", got, want)
			}
			golden.Check(t, filepath.Join("unchained", name), un)
			if _, err := libcni.ConfListFromBytes(un); err != nil {
				t.Errorf("libcni does not load the unchained config: %v", err)
			}
			if _, changed, _ := Unchain(un); changed {
				t.Error("second Unchain changed the config")
			}
		})
	}
}

// othersOf is the compact JSON of the plugins that are not meshlet-cni.
func othersOf(t *testing.T, raw []byte, conflist bool) string {
	t.Helper()
	_, plugins, err := parseConfig(raw, conflist)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for i, p := range plugins {
		if typ, _ := pluginType(p, i); typ != contract.PluginType {
			if err := json.Compact(&b, p); err != nil {
				t.Fatal(err)
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func TestChainErrors(t *testing.T) {
	entry := testConfig.Entry()
	for _, tc := range []struct {
		name, in string
		conflist bool
		entry    map[string]any
		want     string
	}{
		{"not JSON", `{"name":`, true, entry, "not a CNI config"},
		{"a list", `[]`, true, entry, "not a JSON object"},
		{"trailing data", `{"name":"n","plugins":[{"type":"a"}]} {}`, true, entry, "data after"},
		{"no name", `{"plugins":[{"type":"a"}]}`, true, entry, `no "name"`},
		{"name not a string", `{"name":1,"plugins":[{"type":"a"}]}`, true, entry, `"name" is a number, expected a string`},
		{"no plugins", `{"name":"n"}`, true, entry, `no "plugins" list`},
		{"plugins not a list", `{"name":"n","plugins":{"type":"a"}}`, true, entry, `"plugins" is an object, expected a list`},
		{"empty plugins", `{"name":"n","plugins":[]}`, true, entry, `"plugins" is empty`},
		{"plugin not an object", `{"name":"n","plugins":["bridge"]}`, true, entry, "plugins[0] is a string, expected a plugin object"},
		{"plugin without type", `{"name":"n","plugins":[{"type":"a"},{"bridge":"b"}]}`, true, entry, `plugins[1] has no "type"`},
		{"plugin with empty type", `{"name":"n","plugins":[{"type":""}]}`, true, entry, `plugins[0] has an empty "type"`},
		{"only meshlet", `{"name":"n","plugins":[{"type":"meshlet-cni"}]}`, true, entry, "no plugin but meshlet-cni"},
		{"conf without type", `{"name":"n"}`, false, entry, `the config has no "type"`},
		{"conflist in a conf", `{"name":"n","plugins":[{"type":"a"}]}`, false, entry, "rename it .conflist"},
		{"conf is meshlet", `{"name":"n","type":"meshlet-cni"}`, false, entry, "no plugin but meshlet-cni"},
		{"entry of another type", `{"name":"n","plugins":[{"type":"a"}]}`, true, map[string]any{"type": "bridge"}, `expected "meshlet-cni"`},
		{"entry capabilities a list", `{"name":"n","plugins":[{"type":"a"}]}`, true, map[string]any{"capabilities": []string{"x"}}, "capabilities is []interface {}, expected an object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Chain([]byte(tc.in), tc.conflist, tc.entry)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to say %q", err, tc.want)
			}
		})
	}
}

func TestChainEntry(t *testing.T) {
	// An entry without type or capability gets both; other capabilities
	// stay; an entry differing only in key order is the same entry.
	in := `{"name":"n","plugins":[{"type":"a"}]}`
	out, _, err := Chain([]byte(in), true, map[string]any{"kubeconfig": "/k", "capabilities": map[string]bool{"portMappings": false}})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"type":"meshlet-cni","capabilities":{"io.kubernetes.cri.pod-annotations":true,"portMappings":false},"kubeconfig":"/k"}`
	_, plugins, _ := parseConfig(out, true)
	var got bytes.Buffer
	_ = json.Compact(&got, plugins[1])
	if got.String() != want {
		t.Errorf("entry %s, want %s", got.String(), want)
	}
	reordered := strings.Replace(string(out), `"kubeconfig": "/k",`, "", 1)
	reordered = strings.Replace(reordered, `"type": "meshlet-cni"`, `"type": "meshlet-cni", "kubeconfig": "/k"`, 1)
	if _, changed, err := Chain([]byte(reordered), true, map[string]any{"kubeconfig": "/k", "capabilities": map[string]bool{"portMappings": false}}); err != nil || changed {
		t.Errorf("reordered entry: changed %v, err %v (%s)", changed, err, reordered)
	}
}

func TestUnchainErrors(t *testing.T) {
	if _, _, err := Unchain([]byte(`{"name":"n","plugins":[{"type":"meshlet-cni"}]}`)); err == nil || !strings.Contains(err.Error(), "only plugin") {
		t.Errorf("err = %v", err)
	}
	if _, _, err := Unchain([]byte(`{"name":"n","plugins":"x"}`)); err == nil {
		t.Error("no error for a bad conflist")
	}
	in := []byte(`{"name":"n",  "plugins":[{"type":"a"}]}`)
	if out, changed, err := Unchain(in); err != nil || changed || !bytes.Equal(out, in) {
		t.Errorf("Unchain without entry: changed %v, err %v", changed, err)
	}
}

// TestEntryReadsBackAsTheContract: every key the installer writes is what
// the plugin reads into contract.ConflistEntry, and every key of the
// contract is written or deliberately left to the plugin's default.
func TestEntryReadsBackAsTheContract(t *testing.T) {
	c := InstallConfig{
		KubeconfigPath:  "/var/lib/meshlet/cni/kubeconfig",
		LogFile:         "/var/log/meshlet-cni.log",
		LogLevel:        "debug",
		NodeAgentSocket: "/var/run/meshlet/cni.sock",
		IptablesMode:    "legacy",
	}
	b, err := json.Marshal(c.Entry())
	if err != nil {
		t.Fatal(err)
	}
	var conf cni.NetConf
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	want := contract.ConflistEntry{
		Kubeconfig: c.KubeconfigPath, LogFile: c.LogFile, LogLevel: c.LogLevel,
		NodeAgentSocket: c.NodeAgentSocket, IptablesMode: c.IptablesMode,
	}
	if conf.ConflistEntry != want {
		t.Errorf("the plugin reads %+v from %s, want %+v", conf.ConflistEntry, b, want)
	}
	if conf.Type != contract.PluginType || !conf.Capabilities[contract.CapabilityPodAnnotations] {
		t.Errorf("type %q, capabilities %v", conf.Type, conf.Capabilities)
	}
	pluginDefaults := map[string]bool{"PodLookupTimeout": true, "LockDir": true}
	v := reflect.ValueOf(conf.ConflistEntry)
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if v.Field(i).IsZero() != pluginDefaults[name] {
			t.Errorf("contract.ConflistEntry.%s: written %v, left to the plugin's default %v: say which in Entry and here",
				name, !v.Field(i).IsZero(), pluginDefaults[name])
		}
	}
}
