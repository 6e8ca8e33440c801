package envoybootstrap

import "strings"

// Stats tags. Consul names upstream clusters
//
//	[hash~][subset.]service.namespace.[partition.]datacenter.routing.trustdomain.consul
//
// (peered ones: service.[namespace.]peer.external.trustdomain.consul) and
// upstream listeners (tcp|http).upstream[_peered].service[.namespace][.partition].last
// where last is the datacenter or the peer. Its bootstrap carries one regex
// per label so that dashboards get each label as a tag; the rules below
// describe those names and generate the same regexes, in the same order
// (Envoy applies tag extractors in order).

const labelPattern = `[^.]+`

type namePart struct {
	name     string
	optional bool
	pattern  string // regex for the label; labelPattern when empty
	sep      string // regex for what ends the label
}

var (
	clusterNameParts = []namePart{
		{name: "custom_hash", optional: true, sep: `~`},
		{name: "service_subset", optional: true, sep: `\.`},
		{name: "service", sep: `\.`},
		{name: "namespace", sep: `\.`},
		{name: "partition", optional: true, sep: `\.`},
		{name: "datacenter", sep: `\.`},
		{name: "routing_type", sep: `\.`},
		{name: "trust_domain", sep: `\.`},
	}
	peeredClusterNameParts = []namePart{
		{name: "service", sep: `\.`},
		{name: "namespace", optional: true, sep: `\.`},
		{name: "peer", sep: `\.`},
		{name: "routing_type", pattern: `external`, sep: `\.`},
		{name: "trust_domain", sep: `\.`},
	}
	listenerNameParts = []namePart{
		{name: "service"},
		{name: "namespace", optional: true},
		{name: "partition", optional: true},
		{name: "last"},
	}
	peeredListenerNameParts = []namePart{
		{name: "service"},
		{name: "namespace", optional: true},
		{name: "peer"},
	}
)

// clusterRule extracts one label of an upstream cluster's stats name.
type clusterRule struct {
	label string
	// through: capture the name from its start through this label (the
	// target and full_target tags) instead of label alone.
	through bool
	// internalOnly: match only local (non-peered) routing types, the only
	// ones whose names carry a partition and datacenter.
	internalOnly bool
	peered       bool
}

var clusterRules = []clusterRule{
	{label: "custom_hash"},
	{label: "service_subset"},
	{label: "service"},
	{label: "namespace"},
	{label: "partition", internalOnly: true},
	{label: "datacenter", internalOnly: true},
	{label: "peer", peered: true},
	{label: "routing_type"},
	{label: "trust_domain"},
	{label: "datacenter", through: true},   // tag "target"
	{label: "trust_domain", through: true}, // tag "full_target"
}

func (r clusterRule) tag() string {
	switch {
	case r.through && r.label == "datacenter":
		return "target"
	case r.through:
		return "full_target"
	}
	return r.label
}

// regex renders the rule. The outer group is what Envoy strips from the
// stat's name, the inner one the tag's value. passthrough: also match
// transparent-proxy passthrough clusters (not done by the deprecated tags,
// which predate them).
func (r clusterRule) regex(passthrough bool) string {
	parts := clusterNameParts
	prefix := `^cluster\.`
	if r.peered {
		parts = peeredClusterNameParts
	} else if passthrough {
		prefix += `(?:passthrough~)?`
	}
	var sb strings.Builder
	sb.WriteString(prefix + "(")
	if r.through {
		sb.WriteString("(")
	}
	for _, p := range parts {
		body := p.pattern
		if body == "" {
			body = labelPattern
		}
		if r.internalOnly && p.name == "routing_type" {
			body = `internal[^.]*`
		}
		if p.name == r.label {
			if r.through {
				body += ")"
			} else {
				body = "(" + body + ")"
			}
		}
		piece := body + p.sep
		if p.optional {
			piece = "(?:" + piece + ")?"
		}
		sb.WriteString(piece)
	}
	sb.WriteString(`consul\.)`)
	return sb.String()
}

// listenerRule extracts one label of an upstream listener's stats name.
type listenerRule struct {
	tag   string
	label string
	kinds string // which listeners: upstream, upstream_peered or both
	parts []namePart
}

var listenerRules = []listenerRule{
	{tag: "service", label: "service", kinds: `upstream(?:_peered)?`, parts: listenerNameParts},
	{tag: "datacenter", label: "last", kinds: `upstream`, parts: listenerNameParts},
	{tag: "peer", label: "peer", kinds: `upstream_peered`, parts: peeredListenerNameParts},
	{tag: "namespace", label: "namespace", kinds: `upstream(?:_peered)?`, parts: listenerNameParts},
	{tag: "partition", label: "partition", kinds: `upstream`, parts: listenerNameParts},
}

func (r listenerRule) regex() string {
	var sb strings.Builder
	sb.WriteString(`^(?:tcp|http)\.` + r.kinds + `\.(`)
	for i, p := range r.parts {
		body := labelPattern
		if p.name == r.label {
			body = "(" + body + ")"
		}
		if i > 0 {
			body = `\.` + body
		}
		if p.optional {
			body = "(?:" + body + ")?"
		}
		sb.WriteString(body)
	}
	sb.WriteString(`\.)`)
	return sb.String()
}

func (c Config) statsTags() []statsTag {
	var tags []statsTag
	regex := func(name, re string) {
		tags = append(tags, statsTag{TagName: name, Regex: re})
	}
	fixed := func(name, value string) {
		if value == "" {
			return
		}
		tags = append(tags, statsTag{TagName: name, FixedValue: value})
	}

	for _, r := range clusterRules {
		regex("consul.destination."+r.tag(), r.regex(true))
	}
	for _, r := range listenerRules {
		regex("consul.upstream."+r.tag, r.regex())
	}
	// The tags Consul 1.9 renamed to consul.destination.*. Consul still
	// emits them unless told not to, and dashboards may still use them.
	for _, r := range clusterRules {
		if r.peered || (r.label == "partition" && !r.through) {
			continue // added after the rename, so never had an old name
		}
		regex("consul."+r.tag(), r.regex(false))
	}

	// local_cluster is Consul's older name for the source service.
	fixed("local_cluster", c.ServiceName)
	fixed("consul.source.service", c.ServiceName)
	fixed("consul.source.namespace", orDefault(c.Namespace))
	fixed("consul.source.partition", orDefault(c.Partition))
	fixed("consul.source.datacenter", c.Datacenter)
	return tags
}
