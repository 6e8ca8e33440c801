package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/meshlet/meshlet/iptables"
)

// hostIptables is the host's iptables backend, resolved in this one place
// for meshlet-cni's conflist entry and the repair alike: the plugin must
// write a pod's rules into the backend the repair later checks, or the
// repair finds every pod bare. Each resolving it on its own let them part:
// a detection failing at start left the entry at auto for good, while the
// repair found the backend later and checked it.
//
// The first mode found is kept for the node agent's life. Until then the entry
// leaves the plugin to detect the backend on the host, the repair waits,
// and the repair's passes look again (kube-proxy, whose rules tell the
// backend, may start after the node agent at node boot); once found, the
// installer rewrites the entry with it. Without the repair nothing looks
// again: the plugin, the backend's only user then, detects it itself.
type hostIptables struct {
	detect func() (iptables.Mode, error)
	log    *slog.Logger

	mu   sync.Mutex
	mode string
	// known is closed when mode is set.
	known chan struct{}
}

func newHostIptables(detect func() (iptables.Mode, error), log *slog.Logger) *hostIptables {
	return &hostIptables{detect: detect, log: log, known: make(chan struct{})}
}

// resolve returns the backend, detecting it while it is unknown.
func (h *hostIptables) resolve() (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mode != "" {
		return h.mode, nil
	}
	m, err := h.detect()
	if err == nil && m == "" {
		err = errors.New("detection found no backend")
	}
	if err != nil {
		return "", err
	}
	h.mode = string(m)
	close(h.known)
	h.log.Info("host iptables backend", "mode", h.mode)
	return h.mode, nil
}

// current is the backend, "" while it is unknown.
func (h *hostIptables) current() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mode
}

// detectIptablesMode tells the host's backend. Detected in the node agent's
// image it would be the image's, so auto reads the host's iptables
// symlinks through HostRoot, else tells it from the host network's rules
// (kube-proxy's).
func (a *Agent) detectIptablesMode() (iptables.Mode, error) {
	switch {
	case a.cfg.IptablesMode != "auto":
		return iptables.Mode(a.cfg.IptablesMode), nil
	case a.cfg.detectIptablesMode != nil:
		return a.cfg.detectIptablesMode()
	}
	m, err := iptables.DetectModeIn(a.cfg.HostRoot)
	if err != nil {
		var err2 error
		if m, err2 = iptables.DetectModeFromRules(); err2 != nil {
			return "", fmt.Errorf("%w; %w", err, err2)
		}
	}
	return m, nil
}

// resolveIptablesModeAtStart makes the first attempt, and says what an
// unknown backend means for the node.
func (a *Agent) resolveIptablesModeAtStart() {
	_, err := a.ipt.resolve()
	switch {
	case err == nil:
	case a.repairer != nil:
		a.log.Error("the host's iptables backend is unknown: meshlet-cni detects it on the host for each pod, and the repair of unprotected pods waits until the agent finds it (it looks again before every pass); set -iptables-mode to give it", "err", err)
	default:
		a.log.Warn("the host's iptables backend is unknown: meshlet-cni detects it on the host for each pod; set -iptables-mode to give it", "err", err)
	}
}
