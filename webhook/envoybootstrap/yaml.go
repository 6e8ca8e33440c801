package envoybootstrap

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// render renders the bootstrap as block YAML, indented by two.
func render(d document) (string, error) {
	var doc yaml.Node
	if err := doc.Encode(d); err != nil {
		return "", fmt.Errorf("encoding as YAML: %w", err)
	}
	yamlStyle(&doc)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return "", fmt.Errorf("encoding as YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return "", fmt.Errorf("encoding as YAML: %w", err)
	}
	return buf.String(), nil
}

// yamlStyle turns the tree into block style with plain scalars, the
// encoder quoting where YAML 1.2 needs it. Two kinds of strings are
// double-quoted besides:
//   - those holding a $(VAR) reference: kubelet expands them before Envoy
//     parses the YAML, and quoting keeps whatever value they expand to (an
//     IPv6 address, a name that looks like a number) a string;
//   - those Envoy would read as something else if plain. Envoy's YAML
//     loader (yaml-cpp) reads a plain yes, on, y (and their no forms) as a
//     boolean and anything numeric as a number, where the YAML 1.2 encoder
//     leaves them plain; a namespace or datacenter named "yes" would then
//     make the bootstrap invalid.
func yamlStyle(n *yaml.Node) {
	switch n.Kind {
	case yaml.ScalarNode:
		n.Style = 0
		if n.Tag == "!!str" && (strings.Contains(n.Value, "$(") || !plainString(n.Value)) {
			n.Style = yaml.DoubleQuotedStyle
		}
	case yaml.MappingNode, yaml.SequenceNode:
		n.Style = 0
	}
	for _, c := range n.Content {
		yamlStyle(c)
	}
}

// plainString: s, written plain, is read back as the string s by
// yaml-cpp's conversions as Envoy applies them (null, then bool, then
// number). It errs on the side of quoting.
func plainString(s string) bool {
	switch strings.ToLower(s) {
	case "", "~", "null", "y", "yes", "n", "no", "true", "false", "on", "off":
		return false
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return false
	}
	if _, err := strconv.ParseInt(s, 0, 64); err == nil {
		return false
	}
	// .inf, .nan and their signed and capitalised forms.
	if v := strings.TrimLeft(strings.ToLower(s), "+-"); v == ".inf" || v == ".nan" {
		return false
	}
	return true
}
