package reaper

import (
	"encoding/json"
	"strings"
	"time"

	capi "github.com/hashicorp/consul/api"
	"k8s.io/apimachinery/pkg/types"
)

// Token is what the reaper keeps of a login token: never its SecretID,
// which the token list carries and which must reach no log line, metric or
// error.
type Token struct {
	AccessorID  string
	Description string
	AuthMethod  string
	CreateTime  time.Time
	// CreateIndex orders the tokens of one pod: Consul's Raft index grows
	// with each write, where two CreateTimes may be equal.
	CreateIndex uint64
}

// tokensOf drops the SecretIDs of a token list as soon as it arrives.
func tokensOf(entries []*capi.ACLTokenListEntry) []Token {
	out := make([]Token, 0, len(entries))
	for _, e := range entries {
		if e == nil {
			continue
		}
		out = append(out, Token{AccessorID: e.AccessorID, Description: e.Description, AuthMethod: e.AuthMethod,
			CreateTime: e.CreateTime, CreateIndex: e.CreateIndex})
	}
	return out
}

// Reason says why a token is deleted; it is the deleted-tokens metric's
// label.
type Reason string

const (
	// PodGone: no live pod of the token's namespace/name (none at all, or
	// one that has finished: its containers never run again).
	PodGone Reason = "pod_gone"
	// UIDMismatch: a pod of that name lives, but it is another pod (a
	// StatefulSet's pod deleted and created again under its name).
	UIDMismatch Reason = "uid_mismatch"
	// Superseded: the pod lives and holds a newer token. A pod has one
	// sidecar, which holds one token; an older one was left by a sidecar
	// that crashed and started again, or by a login whose answer was lost.
	Superseded Reason = "superseded"
)

// Orphan is a token to delete, with the pod it names.
type Orphan struct {
	Token
	Pod    string // namespace/name from the login's meta
	PodUID string // from the login's meta; "" when the login sent none
	Reason Reason
}

// Plan is what one pass does with the auth method's tokens.
type Plan struct {
	Delete []Orphan
	// NoMeta are tokens of the auth method whose description holds no
	// pod meta: a login that is not a meshlet sidecar's, or a description
	// edited since. Not ours to judge: kept.
	NoMeta []Token
	// Recheck, when not zero, is the first time a token kept only because
	// it is younger than the grace leaves it: the next pass is due then.
	Recheck time.Time
}

// Decide is the reaper's whole judgement, without a server: tokens are the
// auth method's, pods the live pods by namespace/name (pods that have
// finished left out), grace the age under which a token is kept whatever
// it names, because the pod cache may not have seen its brand new pod yet.
func Decide(tokens []Token, authMethod string, pods map[string]types.UID, now time.Time, grace time.Duration) Plan {
	var plan Plan
	type candidate struct {
		tok      Token
		pod, uid string
		reason   Reason
	}
	var cands []candidate
	// newest is, per live pod, the newest of its tokens: the one its
	// sidecar holds.
	newest := map[string]Token{}
	for _, t := range tokens {
		if t.AuthMethod != authMethod {
			continue // the list is filtered by auth method: not ours in any case
		}
		pod, uid, ok := podMeta(t.Description)
		if !ok {
			plan.NoMeta = append(plan.NoMeta, t)
			continue
		}
		c := candidate{tok: t, pod: pod, uid: uid}
		live, found := pods[pod]
		switch {
		case !found:
			c.reason = PodGone
		case uid != "" && types.UID(uid) != live:
			c.reason = UIDMismatch
		default:
			if n, seen := newest[pod]; !seen || t.CreateIndex > n.CreateIndex {
				newest[pod] = t
			}
		}
		cands = append(cands, c)
	}
	for _, c := range cands {
		if c.reason == "" {
			if n := newest[c.pod]; n.CreateIndex == c.tok.CreateIndex && n.AccessorID == c.tok.AccessorID {
				continue // the pod's own token
			}
			c.reason = Superseded
		}
		if leaves := c.tok.CreateTime.Add(grace); leaves.After(now) {
			if plan.Recheck.IsZero() || leaves.Before(plan.Recheck) {
				plan.Recheck = leaves
			}
			continue
		}
		plan.Delete = append(plan.Delete, Orphan{Token: c.tok, Pod: c.pod, PodUID: c.uid, Reason: c.reason})
	}
	return plan
}

// loginPrefix starts the description Consul gives a login's token when the
// login sent meta, followed by that meta in JSON.
const loginPrefix = "token created via login: "

// podMeta is the pod a login token names: its meta's pod, as
// namespace/name, and pod-uid ("" when the login sent none). ok is false
// for any description that is not such meta.
func podMeta(description string) (pod, uid string, ok bool) {
	raw, found := strings.CutPrefix(description, loginPrefix)
	if !found {
		return "", "", false
	}
	var meta map[string]string
	if err := json.Unmarshal([]byte(raw), &meta); err != nil {
		return "", "", false
	}
	pod = meta["pod"]
	ns, name, found := strings.Cut(pod, "/")
	if !found || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", "", false
	}
	return pod, meta["pod-uid"], true
}
