package install

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/meshlet/meshlet/contract"
)

// Chain returns the config raw (a conflist, or a single-plugin .conf or
// .json when isConflist is false) as a conflist whose last plugin is
// entry, meshlet-cni's configuration. entry's "type" is set to
// meshlet-cni and its capabilities always include
// contract.CapabilityPodAnnotations.
//
// A single-plugin config becomes a conflist with its cniVersion and name,
// and the rest of it as the only plugin before meshlet-cni. Any
// meshlet-cni entry already in the list that is not entry, or not last,
// is replaced; changed is false, and out is raw, when the list already
// ends with entry and holds no other meshlet-cni. The other plugins are
// kept as written, key order included.
func Chain(raw []byte, isConflist bool, entry map[string]any) (out []byte, changed bool, err error) {
	want, err := normalizeEntry(entry)
	if err != nil {
		return nil, false, err
	}
	top, plugins, err := parseConfig(raw, isConflist)
	if err != nil {
		return nil, false, err
	}
	kept, mine, err := splitPlugins(plugins)
	if err != nil {
		return nil, false, err
	}
	lastIsWant := len(mine) == 1 && mine[0] == len(plugins)-1 && sameJSON(plugins[mine[0]], want)
	if isConflist && lastIsWant {
		return raw, false, nil
	}
	if len(kept) == 0 {
		return nil, false, errors.New("the config chains no plugin but meshlet-cni: meshlet-cni runs after the plugin that sets up the pod network")
	}
	out, err = withPlugins(top, append(kept, want))
	return out, err == nil, err
}

// Unchain removes every meshlet-cni entry from the conflist raw; changed
// is false, and out is raw, when there is none.
func Unchain(raw []byte) (out []byte, changed bool, err error) {
	top, plugins, err := parseConfig(raw, true)
	if err != nil {
		return nil, false, err
	}
	kept, _, err := splitPlugins(plugins)
	if err != nil {
		return nil, false, err
	}
	if len(kept) == len(plugins) {
		return raw, false, nil
	}
	if len(kept) == 0 {
		return nil, false, errors.New("meshlet-cni is the only plugin of the conflist: removing it would leave no network")
	}
	out, err = withPlugins(top, kept)
	return out, err == nil, err
}

// splitPlugins separates the other plugins from meshlet-cni's entries,
// returning the indexes of the latter.
func splitPlugins(plugins []json.RawMessage) (others []json.RawMessage, mine []int, err error) {
	for i, p := range plugins {
		t, err := pluginType(p, i)
		if err != nil {
			return nil, nil, err
		}
		if t == contract.PluginType {
			mine = append(mine, i)
		} else {
			others = append(others, p)
		}
	}
	return others, mine, nil
}

// HasEntry reports whether the conflist raw chains meshlet-cni.
func HasEntry(raw []byte) bool {
	_, plugins, err := parseConfig(raw, true)
	if err != nil {
		return false
	}
	for i, p := range plugins {
		if t, _ := pluginType(p, i); t == contract.PluginType {
			return true
		}
	}
	return false
}

// parseConfig returns a conflist's top-level object and its plugins; a
// single-plugin config is converted first.
func parseConfig(raw []byte, isConflist bool) (object, []json.RawMessage, error) {
	top, err := decodeObject(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("not a CNI config (a JSON object): %w", err)
	}
	if !isConflist {
		return fromSingle(top)
	}
	name, ok := top.get("name")
	if !ok {
		return nil, nil, errors.New(`conflist has no "name"`)
	}
	if _, err := jsonString(name, `conflist "name"`); err != nil {
		return nil, nil, err
	}
	list, ok := top.get("plugins")
	if !ok {
		return nil, nil, errors.New(`conflist has no "plugins" list`)
	}
	var plugins []json.RawMessage
	if err := json.Unmarshal(list, &plugins); err != nil {
		return nil, nil, fmt.Errorf(`conflist "plugins" is %s, expected a list of plugin objects`, kind(list))
	}
	if len(plugins) == 0 {
		return nil, nil, errors.New(`conflist "plugins" is empty`)
	}
	return top, plugins, nil
}

// fromSingle turns a single-plugin config into a conflist: cniVersion and
// name move to the list, the rest is its one plugin (libcni's
// ConfListFromConf does the same, but keeps name and cniVersion in the
// plugin too).
func fromSingle(conf object) (object, []json.RawMessage, error) {
	if _, ok := conf.get("plugins"); ok {
		return nil, nil, errors.New(`a single-plugin config (.conf, .json) holds a "plugins" list; containerd refuses it (rename it .conflist)`)
	}
	if _, err := pluginType(conf.marshal(), -1); err != nil {
		return nil, nil, err
	}
	var top object
	if v, ok := conf.get("cniVersion"); ok {
		top = append(top, member{"cniVersion", v})
	}
	name, ok := conf.get("name")
	if !ok {
		name = json.RawMessage(`""`)
	}
	if _, err := jsonString(name, `config "name"`); err != nil {
		return nil, nil, err
	}
	top = append(top, member{"name", name})
	return top, []json.RawMessage{conf.without("name", "cniVersion").marshal()}, nil
}

// pluginType is a plugin's "type"; i < 0 names a single-plugin config.
func pluginType(p json.RawMessage, i int) (string, error) {
	what := fmt.Sprintf("plugins[%d]", i)
	if i < 0 {
		what = "the config"
	}
	o, err := decodeObject(p)
	if err != nil {
		return "", fmt.Errorf("%s is %s, expected a plugin object", what, kind(p))
	}
	t, ok := o.get("type")
	if !ok {
		return "", fmt.Errorf(`%s has no "type"`, what)
	}
	s, err := jsonString(t, what+` "type"`)
	if err == nil && s == "" {
		err = fmt.Errorf(`%s has an empty "type"`, what)
	}
	return s, err
}

func withPlugins(top object, plugins []json.RawMessage) ([]byte, error) {
	list, err := json.Marshal(plugins)
	if err != nil {
		return nil, err
	}
	return pretty(top.set("plugins", list).marshal())
}

// normalizeEntry is entry as JSON with its type and the pod-annotations
// capability.
func normalizeEntry(entry map[string]any) (json.RawMessage, error) {
	b, err := json.Marshal(entry)
	if err != nil {
		return nil, fmt.Errorf("meshlet-cni entry: %w", err)
	}
	v, _ := decodeAny(b) // numbers as written, not float64
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("meshlet-cni entry is not a JSON object")
	}
	if t, ok := m["type"]; ok && t != contract.PluginType {
		return nil, fmt.Errorf("meshlet-cni entry has type %v, expected %q", t, contract.PluginType)
	}
	delete(m, "type")
	caps, ok := m["capabilities"].(map[string]any)
	if !ok && m["capabilities"] != nil {
		return nil, fmt.Errorf("meshlet-cni entry: capabilities is %T, expected an object", m["capabilities"])
	}
	if caps == nil {
		caps = map[string]any{}
	}
	caps[contract.CapabilityPodAnnotations] = true
	m["capabilities"] = caps
	rest, err := json.Marshal(m) // never "{}": capabilities is there
	if err != nil {
		return nil, err
	}
	// "type" first, as people write it; the rest sorted.
	return append([]byte(`{"type":"`+contract.PluginType+`",`), rest[1:]...), nil
}
