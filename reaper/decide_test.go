package reaper

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	"k8s.io/apimachinery/pkg/types"
)

const method = "meshlet-k8s"

// loginDesc is the description Consul gives a login's token (its
// BuildTokenDescription: the prefix, then the meta in JSON).
func loginDesc(meta map[string]string) string {
	b, err := json.Marshal(meta)
	if err != nil {
		panic(err)
	}
	return "token created via login: " + string(b)
}

// TestDecide: each rule of Decide, token by token, against one set of live
// pods and one now.
func TestDecide(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	const grace = 5 * time.Second
	old := now.Add(-time.Hour)
	pods := map[string]types.UID{"default/web-1": "uid-web-1", "shop/cart-0": "uid-cart-0-new"}
	tok := func(id string, created time.Time, index uint64, desc string) Token {
		return Token{AccessorID: id, Description: desc, AuthMethod: method, CreateTime: created, CreateIndex: index}
	}
	meta := func(pod, uid string) string { return loginDesc(map[string]string{"pod": pod, "pod-uid": uid}) }
	for _, tc := range []struct {
		name    string
		tokens  []Token
		delete  map[string]Reason // accessor ID → reason
		noMeta  []string
		recheck time.Time
	}{
		{name: "orphan: its pod is gone",
			tokens: []Token{tok("a", old, 1, meta("default/web-2", "uid-web-2"))},
			delete: map[string]Reason{"a": PodGone}},
		{name: "orphan: a pod of its name lives with another UID",
			tokens: []Token{tok("a", old, 1, meta("shop/cart-0", "uid-cart-0-old"))},
			delete: map[string]Reason{"a": UIDMismatch}},
		{name: "kept: its pod lives",
			tokens: []Token{tok("a", old, 1, meta("default/web-1", "uid-web-1"))}},
		{name: "kept: its pod lives and the login sent no UID",
			tokens: []Token{tok("a", old, 1, loginDesc(map[string]string{"pod": "default/web-1"}))}},
		{name: "orphan: no UID sent and no pod of its name",
			tokens: []Token{tok("a", old, 1, loginDesc(map[string]string{"pod": "default/gone"}))},
			delete: map[string]Reason{"a": PodGone}},
		{name: "kept while young though its pod is unknown, rechecked when the grace ends",
			tokens:  []Token{tok("a", now.Add(-2*time.Second), 1, meta("default/web-new", "uid-new"))},
			recheck: now.Add(3 * time.Second)},
		{name: "a token exactly as old as the grace is judged",
			tokens: []Token{tok("a", now.Add(-grace), 1, meta("default/web-2", "uid-web-2"))},
			delete: map[string]Reason{"a": PodGone}},
		{name: "a token from a clock ahead of ours is young",
			tokens:  []Token{tok("a", now.Add(time.Minute), 1, meta("default/web-2", "uid-web-2"))},
			recheck: now.Add(time.Minute + grace)},
		{name: "the earliest recheck of several young orphans",
			tokens: []Token{tok("a", now.Add(-1*time.Second), 1, meta("default/x", "x")),
				tok("b", now.Add(-4*time.Second), 2, meta("default/y", "y")),
				tok("c", now.Add(-1*time.Second), 3, meta("default/web-1", "uid-web-1"))},
			recheck: now.Add(time.Second)},
		{name: "superseded: the live pod's older token goes, its newest stays",
			tokens: []Token{tok("old", old, 10, meta("default/web-1", "uid-web-1")),
				tok("new", old.Add(time.Minute), 20, meta("default/web-1", "uid-web-1")),
				tok("older", old.Add(-time.Minute), 5, meta("default/web-1", "uid-web-1"))},
			delete: map[string]Reason{"old": Superseded, "older": Superseded}},
		{name: "superseded is ordered by index, not by time",
			tokens: []Token{tok("first", old, 10, meta("default/web-1", "uid-web-1")),
				tok("second", old, 11, meta("default/web-1", "uid-web-1"))},
			delete: map[string]Reason{"first": Superseded}},
		{name: "a superseded token younger than the grace waits for it",
			tokens: []Token{tok("old", now.Add(-time.Second), 10, meta("default/web-1", "uid-web-1")),
				tok("new", now, 11, meta("default/web-1", "uid-web-1"))},
			recheck: now.Add(4 * time.Second)},
		{name: "a token of the pod's old incarnation does not supersede nor count as the live one",
			tokens: []Token{tok("cur", old, 10, meta("shop/cart-0", "uid-cart-0-new")),
				tok("prev", old.Add(time.Minute), 11, meta("shop/cart-0", "uid-cart-0-old"))},
			delete: map[string]Reason{"prev": UIDMismatch}},
		{name: "no meta: kept and reported",
			tokens: []Token{tok("bare", old, 1, "token created via login"), tok("ui", old, 2, "made by hand")},
			noMeta: []string{"bare", "ui"}},
		{name: "another auth method's token: ignored",
			tokens: []Token{{AccessorID: "other", Description: meta("default/gone", "x"), AuthMethod: "other", CreateTime: old}}},
		{name: "nothing", tokens: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan := Decide(tc.tokens, method, pods, now, grace)
			got := map[string]Reason{}
			for _, o := range plan.Delete {
				if _, dup := got[o.AccessorID]; dup {
					t.Errorf("token %s to delete twice", o.AccessorID)
				}
				got[o.AccessorID] = o.Reason
				pod, uid, _ := podMeta(o.Description)
				if o.Pod != pod || o.PodUID != uid {
					t.Errorf("orphan %s names pod %s (%s), its description %s (%s)", o.AccessorID, o.Pod, o.PodUID, pod, uid)
				}
			}
			if len(got) != len(tc.delete) {
				t.Errorf("delete %v, want %v", got, tc.delete)
			}
			for id, r := range tc.delete {
				if got[id] != r {
					t.Errorf("token %s: reason %q, want %q (all: %v)", id, got[id], r, got)
				}
			}
			var noMeta []string
			for _, tk := range plan.NoMeta {
				noMeta = append(noMeta, tk.AccessorID)
			}
			if !slices.Equal(noMeta, tc.noMeta) {
				t.Errorf("no meta %v, want %v", noMeta, tc.noMeta)
			}
			if !plan.Recheck.Equal(tc.recheck) {
				t.Errorf("recheck at %v, want %v", plan.Recheck, tc.recheck)
			}
		})
	}
}

// TestPodMetaOddDescriptions: a description that is not a meshlet login's
// meta, however odd, is no pod, and nothing panics on it.
func TestPodMetaOddDescriptions(t *testing.T) {
	for _, d := range []string{
		"", "token created via login", "token created via login:", "token created via login: ",
		"token created via login: null", "token created via login: []", "token created via login: {",
		`token created via login: {"pod":1}`, `token created via login: {"pod":"web-1"}`,
		`token created via login: {"pod":"/web-1"}`, `token created via login: {"pod":"default/"}`,
		`token created via login: {"pod":"a/b/c"}`, `token created via login: {"pod-uid":"x"}`,
		`token created via login: {"pod":"default/web-1"} and more`, `token created via login: {"pod":null}`,
		`Token Created Via Login: {"pod":"default/web-1"}`, ` token created via login: {"pod":"default/web-1"}`,
		"token created via login: \x00\xff", strings.Repeat("{", 10000),
	} {
		if pod, uid, ok := podMeta(d); ok {
			t.Errorf("%q: pod %q uid %q, want none", d, pod, uid)
		}
	}
	pod, uid, ok := podMeta(`token created via login: {"pod":"default/web-1","pod-uid":"abc","other":"x"}`)
	if !ok || pod != "default/web-1" || uid != "abc" {
		t.Errorf("TestProxyLogsIn's description: %q %q %v", pod, uid, ok)
	}
	// Decide reports each such token as without meta, deleting none.
	var toks []Token
	for i, d := range []string{"", "token created via login: {", `token created via login: {"pod":"a/b/c"}`} {
		toks = append(toks, Token{AccessorID: string(rune('a' + i)), Description: d, AuthMethod: method})
	}
	if plan := Decide(toks, method, nil, time.Now(), 0); len(plan.Delete) != 0 || len(plan.NoMeta) != 3 {
		t.Errorf("odd descriptions: delete %v, no meta %d; want none, 3", plan.Delete, len(plan.NoMeta))
	}
}

// TestTokensOfDropsSecrets: the SecretID of a listed token goes nowhere
// past the list.
func TestTokensOfDropsSecrets(t *testing.T) {
	const secret = "5e3c0b1a-secret-never-logged"
	toks := tokensOf([]*capi.ACLTokenListEntry{nil, {AccessorID: "acc", SecretID: secret, Description: "d", AuthMethod: method, CreateIndex: 7}})
	if len(toks) != 1 || toks[0].AccessorID != "acc" || toks[0].CreateIndex != 7 || toks[0].AuthMethod != method {
		t.Fatalf("tokens %+v", toks)
	}
	b, err := json.Marshal(toks)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), secret) {
		t.Errorf("the reaper's token keeps the secret: %s", b)
	}
}
