package contract

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestDecodeSidecarProblem: a report is one JSON object with every field
// set and a known reason; fields this build does not know are ignored, so
// that a newer sidecar can add some.
func TestDecodeSidecarProblem(t *testing.T) {
	const ok = `{"namespace":"shop","pod":"web-1","uid":"5a1c","reason":"LoginFailed","message":"403 (Permission denied)"`
	got, err := DecodeSidecarProblem(strings.NewReader(ok + `,"since":"a newer field"}` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := SidecarProblem{Namespace: "shop", Pod: "web-1", UID: "5a1c", Reason: ProblemLoginFailed, Message: "403 (Permission denied)"}
	if got != want {
		t.Errorf("decoded %+v, want %+v", got, want)
	}
	for _, c := range []struct{ body, want string }{
		{ok + `}{}`, "data after the JSON object"},
		{ok + `} x`, "data after the JSON object"},
		{ok, "unexpected EOF"},
		{`[]`, "cannot unmarshal array"},
		{`{"namespace":1}`, "cannot unmarshal number"},
		{`{}`, "namespace is empty\npod is empty\nuid is empty\nmessage is empty\nreason \"\" is not one of [LoginFailed]"},
		{strings.Replace(ok, "LoginFailed", "Crashed", 1) + `}`, `reason "Crashed" is not one of [LoginFailed]`},
		{strings.Replace(ok, `"web-1"`, `"`+strings.Repeat("a", 254)+`"`, 1) + `}`, "pod is 254 bytes, at most 253"},
	} {
		if _, err := DecodeSidecarProblem(strings.NewReader(c.body)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%.60s: %v, want %q", c.body, err, c.want)
		}
	}
}

// TestProblemMessage: a token anywhere in a message is replaced, whole;
// the rest of the message stays; a long message is cut to fit, never
// inside a character.
func TestProblemMessage(t *testing.T) {
	const jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl-_"
	for in, want := range map[string]string{
		"403 (Permission denied)":             "403 (Permission denied)",
		"bad token " + jwt + ": expired":      "bad token [redacted token]: expired",
		`{"token":"` + jwt + `"}`:             `{"token":"[redacted token]"}`,
		"header only eyJhbGciOiJub25lIn0 end": "header only [redacted token] end",
	} {
		if got := ProblemMessage(in); got != want {
			t.Errorf("ProblemMessage(%q) = %q, want %q", in, got, want)
		}
	}
	long := strings.Repeat("é", SidecarProblemMaxMessage) // 2 bytes each
	got := ProblemMessage(long)
	if len(got) > SidecarProblemMaxMessage || !utf8.ValidString(got) || !strings.HasSuffix(got, "é…") {
		t.Errorf("ProblemMessage of %d bytes: %d bytes, valid UTF-8 %v, ends %q", len(long), len(got), utf8.ValidString(got), got[len(got)-8:])
	}
}
