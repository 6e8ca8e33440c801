// Package nodeagent is the protocol between meshlet-cni and the node agent's
// pod cache (daemon/podcache): on a unix socket, one request and one
// response per connection, each a line of JSON. It lives beside the
// plugin, its client, and the node agent's server imports it from here,
// so the plugin imports nothing of the node agent. It imports nothing
// meshlet-cni does not link already, so the plugin pays no start-up time
// for it (client-go and Prometheus stay in the node agent).
package nodeagent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// Version is the protocol version both sides send. A server answers a
// request of another version with Found false and a Reason, and a client
// refuses an answer of another version: either way the plugin falls back
// to the API server, so node agent and plugin may be upgraded in any
// order. Kind came without a new version: a peer that predates it reads
// the requests of one that has it as before, and the other way round
// (Request.Kind says how).
const Version = 1

// MaxRequest bounds a request line: a namespace and a name are at most
// 63 and 253 bytes, a UID 36.
const MaxRequest = 4 << 10

// MaxResponse bounds a response line: the API server limits a pod's
// annotations to 256 KiB in all; JSON escaping can at most double that
// for ordinary text.
const MaxResponse = 1 << 20

// Kind says whether a request asks or tells.
type Kind string

const (
	// KindLookup asks for the pod's annotations.
	KindLookup Kind = "lookup"
	// KindSandbox tells the node agent that meshlet-cni has redirected
	// the pod's new sandbox, and which IPs it has (Request.SandboxIPs).
	// The node agent may then register the pod at once instead of
	// waiting for kubelet to report the IP at its next status sync, so
	// the pod's proxy finds its registration sooner. The answer only
	// says whether the notice was taken.
	KindSandbox Kind = "sandbox"
)

// Request asks for the annotations of one pod (KindLookup) or tells the
// node agent that its sandbox is up (KindSandbox).
type Request struct {
	Version int `json:"v"`
	// Kind is what the request is. A meshlet-cni that predates the field
	// sends none: WithInferredKind reads its requests as it meant them.
	// A node agent that predates it ignores it, as encoding/json does an
	// unknown field, and tells the kinds apart by SandboxIPs, which every
	// sandbox notice carries and no lookup does; one older still answers
	// a notice as a lookup, and registers the pod once kubelet reports
	// its IP.
	Kind      Kind   `json:"kind,omitempty"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// UID, when the caller has it (K8S_POD_UID), must match the cached
	// pod's: a pod of the same name that was deleted and created again
	// is a different pod. A sandbox notice needs it.
	UID string `json:"uid,omitempty"`
	// SandboxIPs are the sandbox's IPs, as meshlet-cni's prevResult gives
	// them: in a sandbox notice, and only there.
	SandboxIPs []string `json:"sandboxIPs,omitempty"`
}

// WithInferredKind returns r with the kind a meshlet-cni that predates
// Kind meant, if r has none: such a plugin, of this protocol version
// too, sent a sandbox notice as a request with SandboxIPs and a lookup as
// one without. The node agent's server calls it on every request it
// reads, so that during a rollout, when an old plugin meets a new node
// agent on a node, the plugin is answered as before.
func (r Request) WithInferredKind() Request {
	if r.Kind != "" {
		return r
	}
	if len(r.SandboxIPs) > 0 {
		r.Kind = KindSandbox
	} else {
		r.Kind = KindLookup
	}
	return r
}

// CheckKind says whether r's kind is one of this protocol's and fits its
// fields: a sandbox notice carries SandboxIPs, a lookup none. Both sides
// call it: the client before it sends r, the server on what it read
// (after WithInferredKind).
func (r Request) CheckKind() error {
	switch r.Kind {
	case KindLookup:
		if len(r.SandboxIPs) > 0 {
			return fmt.Errorf(`"kind" %q with "sandboxIPs": only %q carries them`, r.Kind, KindSandbox)
		}
	case KindSandbox:
		if len(r.SandboxIPs) == 0 {
			return fmt.Errorf(`"kind" %q without "sandboxIPs"`, r.Kind)
		}
	case "":
		return fmt.Errorf(`"kind" is missing, expected %q or %q`, KindLookup, KindSandbox)
	default:
		return fmt.Errorf(`"kind" is %q, expected %q or %q`, r.Kind, KindLookup, KindSandbox)
	}
	return nil
}

// Response is the answer. To a lookup, Found false means "unknown" and
// says nothing about the pod: the caller asks the API server. To a
// sandbox notice, Found says whether the node agent took it.
type Response struct {
	Version     int               `json:"v"`
	Found       bool              `json:"found"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// Reason says why the pod is unknown, or what was wrong with the
	// request.
	Reason string `json:"reason,omitempty"`
}

// Write sends v as one line of JSON.
func Write(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ErrTooLong: the line exceeds the bound of its side.
var ErrTooLong = errors.New("line too long")

// Read decodes one line of at most limit bytes into v. The line may end
// at EOF instead of a newline.
func Read(r io.Reader, limit int, v any) error {
	line, err := bufio.NewReaderSize(io.LimitReader(r, int64(limit)+1), 512).ReadBytes('\n')
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		return err
	}
	if len(bytes.TrimSuffix(line, []byte("\n"))) > limit {
		return fmt.Errorf("%w: more than %d bytes", ErrTooLong, limit)
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}

// Ask sends req, which must be of a known kind (CheckKind), to the server
// on socket and returns its answer, all of it within timeout. It makes
// blocking system calls rather than going through the net package: in
// meshlet-cni, a fresh process per pod, the net package's poller would
// first start up and then hand the wait to another thread and back, a
// large share of what an ask costs there.
func Ask(socket string, req Request, timeout time.Duration) (Response, error) {
	if err := req.CheckKind(); err != nil {
		return Response{}, fmt.Errorf("invalid request: %w", err)
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return Response{}, os.NewSyscallError("socket", err)
	}
	defer syscall.Close(fd)
	c := &conn{fd: fd, deadline: time.Now().Add(timeout)}
	if err := c.connect(socket); err != nil {
		return Response{}, fmt.Errorf("connect to %s: %w", socket, err)
	}
	req.Version = Version
	if err := Write(c, req); err != nil {
		return Response{}, fmt.Errorf("send request: %w", err)
	}
	var resp Response
	if err := Read(c, MaxResponse, &resp); err != nil {
		return Response{}, fmt.Errorf("read answer: %w", err)
	}
	if resp.Version != Version {
		return Response{}, fmt.Errorf("answer of protocol version %d, want %d", resp.Version, Version)
	}
	return resp, nil
}

// conn is a blocking unix socket whose every call ends by deadline
// (SO_RCVTIMEO / SO_SNDTIMEO, set to what is left before each call).
type conn struct {
	fd       int
	deadline time.Time
	tried    bool // connect was interrupted once: EISCONN then means done
}

// arm sets the socket's timeout opt to the time left.
func (c *conn) arm(opt int) error {
	left := time.Until(c.deadline)
	if left < time.Microsecond { // a zero timeval would mean no timeout
		return os.ErrDeadlineExceeded
	}
	tv := syscall.NsecToTimeval(left.Nanoseconds())
	return os.NewSyscallError("setsockopt", syscall.SetsockoptTimeval(c.fd, syscall.SOL_SOCKET, opt, &tv))
}

// A call that times out fails with EAGAIN, one a signal interrupts with
// EINTR (the Go runtime's preemption signals included: SA_RESTART does
// not restart a socket call with a timeout); both are retried, and arm
// then says whether time is up.
func retry(err error) bool { return err == syscall.EINTR || err == syscall.EAGAIN }

// connect waits for room when the listener's backlog is full (a node
// agent that stopped accepting): the kernel bounds that wait by SO_SNDTIMEO,
// then fails with EAGAIN. Non-blocking connect and poll(2) cannot wait
// for it instead: on a unix socket connect then fails with EAGAIN at
// once, and poll reports the unconnected socket writable and hung up.
func (c *conn) connect(socket string) error {
	for {
		if err := c.arm(syscall.SO_SNDTIMEO); err != nil {
			return err
		}
		err := syscall.Connect(c.fd, &syscall.SockaddrUnix{Name: socket})
		switch {
		case err == nil, err == syscall.EISCONN && c.tried:
			return nil
		case retry(err):
			c.tried = true
		default:
			return os.NewSyscallError("connect", err)
		}
	}
}

func (c *conn) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if err := c.arm(syscall.SO_SNDTIMEO); err != nil {
			return n, err
		}
		m, err := syscall.Write(c.fd, p[n:])
		if m > 0 {
			n += m
		}
		if err != nil && !retry(err) {
			return n, os.NewSyscallError("write", err)
		}
	}
	return n, nil
}

func (c *conn) Read(p []byte) (int, error) {
	for {
		if err := c.arm(syscall.SO_RCVTIMEO); err != nil {
			return 0, err
		}
		n, err := syscall.Read(c.fd, p)
		switch {
		case retry(err):
		case err != nil:
			return 0, os.NewSyscallError("read", err)
		case n == 0:
			return 0, io.EOF
		default:
			return n, nil
		}
	}
}
