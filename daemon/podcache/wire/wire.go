// Package wire is the protocol between meshlet-cni and the node agent's
// pod cache (daemon/podcache): on a unix socket, one request and one
// response per connection, each a line of JSON. It imports nothing
// meshlet-cni does not link already, so the plugin pays no start-up time
// for it (client-go and Prometheus stay in the agent).
package wire

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
)

// Version is the protocol version both sides send. A server answers a
// request of another version with Found false and a Reason, and a client
// refuses an answer of another version: either way the plugin falls back
// to the API server, so agent and plugin may be upgraded in any order.
const Version = 1

// MaxRequest bounds a request line: a namespace and a name are at most
// 63 and 253 bytes, a UID 36.
const MaxRequest = 4 << 10

// MaxResponse bounds a response line: the API server limits a pod's
// annotations to 256 KiB in all; JSON escaping can at most double that
// for ordinary text.
const MaxResponse = 1 << 20

// Request asks for the annotations of one pod.
type Request struct {
	Version   int    `json:"v"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// UID, when the caller has it (K8S_POD_UID), must match the cached
	// pod's: a pod of the same name that was deleted and created again
	// is a different pod.
	UID string `json:"uid,omitempty"`
}

// Response is the answer. Found false means "unknown" and says nothing
// about the pod: the caller asks the API server.
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

// Ask sends req to the server on socket and returns its answer. ctx's
// deadline bounds the dial and the answer together.
func Ask(ctx context.Context, socket string, req Request) (Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return Response{}, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return Response{}, err
		}
	}
	req.Version = Version
	if err := Write(conn, req); err != nil {
		return Response{}, fmt.Errorf("send request: %w", err)
	}
	var resp Response
	if err := Read(conn, MaxResponse, &resp); err != nil {
		return Response{}, fmt.Errorf("read answer: %w", err)
	}
	if resp.Version != Version {
		return Response{}, fmt.Errorf("answer of protocol version %d, want %d", resp.Version, Version)
	}
	return resp, nil
}
