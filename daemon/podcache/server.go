// Package podcache answers meshlet-cni's "annotations of pod ns/name"
// from the node agent's pod informer, on a unix socket, so that on
// runtimes which do not pass the pod's annotations the plugin does not pay
// a TLS handshake and an API request per ADD. The protocol is in
// cni/nodeagent; docs/agent.md says how the agent wires it.
package podcache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/contract"
)

// DefaultWait bounds the wait for a pod the informer has not delivered
// yet. It stays under meshlet-cni's 250 ms budget for the whole exchange,
// so the plugin reads "unknown" rather than a timeout; waiting longer
// would not pay anyway: the plugin's fallback to the API server answers
// sooner than that.
const DefaultWait = 200 * time.Millisecond

// pollInterval re-reads the lookup during a wait, for a node agent that
// does not call Notify; with Notify the wait ends as soon as the pod arrives.
const pollInterval = 20 * time.Millisecond

// ioTimeout bounds reading a request and writing its answer: a
// connection lasts at most twice this plus the wait.
const ioTimeout = time.Second

// Lookup finds a pod in the node agent's cache. ListerLookup adapts a
// client-go pod lister.
type Lookup interface {
	Pod(namespace, name string) (*corev1.Pod, bool)
}

// SandboxSink takes meshlet-cni's notices that an injected pod's sandbox
// is up, with its IPs (nodeagent.KindSandbox): the node agent's syncer.
type SandboxSink interface {
	SandboxUp(namespace, name, uid string, ips []netip.Addr)
}

// Server serves the pod cache on a unix socket. Set the exported fields
// before Listen or Serve.
type Server struct {
	// Wait bounds how long a request for a pod the lookup does not have
	// (or has with another UID) waits for it; 0 answers at once.
	Wait time.Duration
	// Log gets failures at warn and each unknown pod at debug.
	Log *slog.Logger
	// Metrics, if not nil, counts the answers (NewMetrics).
	Metrics *Metrics
	// Sandboxes, if not nil, takes sandbox notices; without it they are
	// answered as bad requests.
	Sandboxes SandboxSink

	socket string
	lookup Lookup
	poll   time.Duration // pollInterval; tests lengthen it to tell Notify from polling

	mu      sync.Mutex
	ln      *net.UnixListener
	bound   os.FileInfo                           // the socket file as Listen left it
	waiters map[string]map[chan struct{}]struct{} // by "namespace/name"
}

// New serves lookup on socket (empty: contract.NodeAgentSocket), waiting DefaultWait
// for late pods.
func New(socket string, lookup Lookup) *Server {
	if socket == "" {
		socket = contract.NodeAgentSocket
	}
	return &Server{Wait: DefaultWait, Log: slog.New(slog.DiscardHandler), socket: socket, lookup: lookup,
		poll: pollInterval, waiters: map[string]map[chan struct{}]struct{}{}}
}

// Socket is the path the server listens on.
func (s *Server) Socket() string { return s.socket }

// Listen creates the socket's directory (0750) if missing, replaces a
// socket no one listens on (a node agent that crashed) and binds the socket,
// mode 0600: only root, that is the runtime running the plugin, may ask.
// Call it before Serve to fail early on a bad path; Serve calls it
// otherwise.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return nil
	}
	dir := filepath.Dir(s.socket)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("pod cache: create socket directory: %w", err)
	}
	if err := checkStale(s.socket); err != nil {
		return fmt.Errorf("pod cache: %w", err)
	}
	// Bound under a temporary name, made 0600, then renamed into place
	// (over a stale socket): the socket is never reachable with the
	// umask's mode.
	tmp := filepath.Join(dir, "."+filepath.Base(s.socket)+".tmp")
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return fmt.Errorf("pod cache: listen: %w", err)
	}
	// Close would unlink the temporary name; Serve removes the real one.
	ln.SetUnlinkOnClose(false)
	err = os.Chmod(tmp, 0o600)
	if err == nil {
		err = os.Rename(tmp, s.socket)
	}
	if err == nil {
		s.bound, err = os.Lstat(s.socket)
	}
	if err != nil {
		_ = ln.Close()
		_ = os.Remove(tmp)
		return fmt.Errorf("pod cache: bind %s: %w", s.socket, err)
	}
	s.ln = ln
	return nil
}

// checkStale accepts a socket file at path that no one listens on (Listen
// renames its own over it). Anything else there is an error: a live
// node agent's socket, or a file that is not a socket.
func checkStale(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket (%v)", path, st.Mode())
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s: another process is serving on it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%s: cannot tell whether it is stale: %w", path, err)
	}
	return nil
}

// Serve answers requests until ctx ends, then waits for the connections
// in flight (a waiting one answers "unknown" at once) and removes the
// socket. It returns nil after a clean stop. Call it once.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Listen(); err != nil {
		return err
	}
	s.Log.Info("pod cache serving", "socket", s.socket, "wait", s.Wait)
	stop := context.AfterFunc(ctx, func() { _ = s.ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	backoff := 5 * time.Millisecond
	for {
		conn, err := s.ln.AcceptUnix()
		if errors.Is(err, net.ErrClosed) {
			break
		}
		if err != nil {
			// Out of file descriptors, say: the plugin falls back to
			// the API server meanwhile, so keep trying, not too often.
			s.Log.Warn("pod cache: accept failed", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handle(ctx, conn)
		}()
	}
	wg.Wait()
	return s.removeSocket()
}

// removeSocket removes the socket file if it is still the one Listen
// bound: another node agent may have replaced it since.
func (s *Server) removeSocket() error {
	st, err := os.Lstat(s.socket)
	if err != nil || !os.SameFile(st, s.bound) {
		return nil
	}
	if err := os.Remove(s.socket); err != nil {
		return fmt.Errorf("pod cache: remove socket: %w", err)
	}
	return nil
}
