package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
)

// object is a JSON object that keeps its members in the order written, so
// that rewriting one member leaves the rest of a file as its author wrote
// it and a second rewrite is byte-for-byte the same.
type object []member

type member struct {
	key string
	val json.RawMessage
}

func decodeObject(raw []byte) (object, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	var o object
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		o = append(o, member{key: tok.(string), val: v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return o, nil
}

// get returns the member's value; with duplicate keys the last one, as
// encoding/json (and so libcni) reads it.
func (o object) get(key string) (json.RawMessage, bool) {
	for i := len(o) - 1; i >= 0; i-- {
		if o[i].key == key {
			return o[i].val, true
		}
	}
	return nil, false
}

// set replaces the member in place, or appends it.
func (o object) set(key string, val json.RawMessage) object {
	found := false
	out := o[:0:0]
	for _, m := range o {
		if m.key == key {
			if found {
				continue
			}
			m.val, found = val, true
		}
		out = append(out, m)
	}
	if !found {
		out = append(out, member{key, val})
	}
	return out
}

func (o object) without(keys ...string) object {
	var out object
	for _, m := range o {
		if !slices.Contains(keys, m.key) {
			out = append(out, m)
		}
	}
	return out
}

func (o object) marshal() json.RawMessage {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(m.val)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// pretty is the file form: two-space indent, newline at the end.
func pretty(raw []byte) ([]byte, error) {
	var c, out bytes.Buffer
	if err := json.Compact(&c, raw); err != nil {
		return nil, err
	}
	if err := json.Indent(&out, c.Bytes(), "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// sameJSON reports whether a and b hold the same value, whatever the
// member order and whitespace (numbers compared as written).
func sameJSON(a, b []byte) bool {
	va, err1 := decodeAny(a)
	vb, err2 := decodeAny(b)
	return err1 == nil && err2 == nil && reflect.DeepEqual(va, vb)
}

func decodeAny(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

func jsonString(raw json.RawMessage, what string) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("%s is %s, expected a string", what, kind(raw))
	}
	return s, nil
}

// kind names a JSON value's type for error messages.
func kind(raw json.RawMessage) string {
	v, err := decodeAny(raw)
	if err != nil {
		return "not JSON"
	}
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return "null"
}
