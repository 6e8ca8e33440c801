package contract

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"
)

// NodeAgentHTTPPort is the node agent's HTTP port on its node's address:
// /healthz, /readyz, /metrics, and SidecarProblemPath for the sidecars of
// its node's pods.
const NodeAgentHTTPPort = 9402

// SidecarProblemPath is where a sidecar POSTs a SidecarProblem of its own
// pod to its node's node agent, which records it as an Event on the pod:
// the sidecar runs as the pod's ServiceAccount, which may not create
// Events and must not be given the right. The node agent accepts a report
// only from the pod's own IP, so a pod can put an Event on itself alone.
const SidecarProblemPath = "/v1/sidecar/problem"

// SidecarProblemMaxBytes bounds a report's body; the node agent reads no
// more.
const SidecarProblemMaxBytes = 4096

// SidecarProblemMaxMessage bounds a report's message in bytes, and the
// Event's message it becomes: about what an Event holds (events.k8s.io
// refuses a longer note), and so that a report always fits
// SidecarProblemMaxBytes.
const SidecarProblemMaxMessage = 1024

// ProblemReason says what went wrong, from a known set: a node agent
// refuses a reason it does not know, rather than record an Event it cannot
// name. New reasons are added here, old ones never change meaning.
type ProblemReason string

const (
	// ProblemLoginFailed: the sidecar's login to Consul's Kubernetes auth
	// method was refused (no binding rule matches, no such auth method,
	// TokenReview refused) or failed; it serves nothing until it succeeds.
	ProblemLoginFailed ProblemReason = "LoginFailed"
)

// ProblemReasons are the reasons this build knows.
func ProblemReasons() []ProblemReason { return []ProblemReason{ProblemLoginFailed} }

// SidecarProblem is a report's body, JSON. Versioned by addition only:
// a decoder ignores fields it does not know, so a newer sidecar may send
// more to an older node agent.
type SidecarProblem struct {
	// Namespace, Pod and UID name the sidecar's own pod, from the
	// downward API (EnvPodNamespace, EnvPodName, EnvPodUID).
	Namespace string        `json:"namespace"`
	Pod       string        `json:"pod"`
	UID       string        `json:"uid"`
	Reason    ProblemReason `json:"reason"`
	// Message names the cause, for people: never a token (RedactJWTs).
	Message string `json:"message"`
}

// Validate says what is wrong with p, every problem at once.
func (p SidecarProblem) Validate() error {
	var errs []error
	for _, f := range []struct {
		name, value string
		max         int
	}{
		// Kubernetes' limits: a namespace is a DNS label, a pod's name a
		// DNS subdomain; a UID is a UUID, with room to spare.
		{"namespace", p.Namespace, 63}, {"pod", p.Pod, 253}, {"uid", p.UID, 64},
		{"message", p.Message, SidecarProblemMaxMessage},
	} {
		switch {
		case f.value == "":
			errs = append(errs, fmt.Errorf("%s is empty", f.name))
		case len(f.value) > f.max:
			errs = append(errs, fmt.Errorf("%s is %d bytes, at most %d", f.name, len(f.value), f.max))
		}
	}
	if !slices.Contains(ProblemReasons(), p.Reason) {
		errs = append(errs, fmt.Errorf("reason %q is not one of %v", p.Reason, ProblemReasons()))
	}
	return errors.Join(errs...)
}

// DecodeSidecarProblem reads one report: a single JSON object whose
// fields have their types and pass Validate. Unknown fields are ignored
// (see SidecarProblem).
func DecodeSidecarProblem(r io.Reader) (SidecarProblem, error) {
	var p SidecarProblem
	dec := json.NewDecoder(r)
	if err := dec.Decode(&p); err != nil {
		return SidecarProblem{}, fmt.Errorf("sidecar problem: %w", err)
	}
	if err := dec.Decode(&json.RawMessage{}); !errors.Is(err, io.EOF) {
		return SidecarProblem{}, errors.New("sidecar problem: data after the JSON object")
	}
	if err := p.Validate(); err != nil {
		return SidecarProblem{}, fmt.Errorf("sidecar problem: %w", err)
	}
	return p, nil
}

// jwtLike is a JSON Web Token or what is left of one: base64url of a JSON
// object starts "eyJ" ({"), and its parts are joined by dots.
var jwtLike = regexp.MustCompile(`eyJ[A-Za-z0-9_\-+/=.]*`)

// ProblemMessage is s fit for a report's message and for the Event it
// becomes: what looks like a JWT replaced, since a ServiceAccount token
// grants its pod's identity to whoever reads it and an Event has many
// readers; cut to SidecarProblemMaxMessage bytes at a character boundary.
// The sidecar applies it before sending, the node agent again before
// recording, so that neither trusts the other for it.
func ProblemMessage(s string) string {
	if strings.Contains(s, "eyJ") {
		s = jwtLike.ReplaceAllString(s, "[redacted token]")
	}
	if len(s) <= SidecarProblemMaxMessage {
		return s
	}
	n := SidecarProblemMaxMessage - len("…")
	for n > 0 && !utf8.RuneStart(s[n]) {
		n-- // not inside a character
	}
	return s[:n] + "…"
}
