package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshlet/meshlet/cni"
	"github.com/meshlet/meshlet/contract"
)

// InstallConfig says where meshlet-cni goes on the node.
type InstallConfig struct {
	// ConfDir is the runtime's CNI conf dir, e.g. /etc/cni/net.d.
	ConfDir string
	// BinDir is the runtime's CNI bin dir, e.g. /opt/cni/bin.
	BinDir string
	// Binary is the meshlet-cni binary to copy there.
	Binary string
	// Kubeconfig is the plugin's kubeconfig; it must load with the
	// plugin's own reader (cni.ValidateKubeconfig).
	Kubeconfig []byte
	// KubeconfigPath is where it is written (mode 0600): absolute and
	// outside ConfDir, where a write would reload the runtime's config
	// and a "<network name>/*.conf" would be read as plugins.
	KubeconfigPath string
	// LogFile and LogLevel are the entry's log_file and log_level
	// (empty: the plugin's defaults).
	LogFile, LogLevel string
	// NodeAgentSocket is the entry's agent_socket: the node agent's socket
	// (contract.NodeAgentSocket), which the plugin asks before the API
	// server when the runtime passes no annotations. Empty: not asked.
	NodeAgentSocket string
	// IptablesMode is the entry's iptables_mode (empty: auto, the host's
	// iptables backend). The node agent sets the mode it resolved, so that the
	// plugin and the node agent's repair check the same backend.
	IptablesMode string

	// FightWindow and FightThreshold: Watch reports a primary CNI that
	// removed the entry FightThreshold times within FightWindow (default
	// 3 times in 10 minutes).
	FightWindow    time.Duration
	FightThreshold int
}

// conflistEntry is meshlet-cni's whole entry: the CNI spec's keys beside
// meshlet's own.
type conflistEntry struct {
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities"`
	contract.ConflistEntry
}

// Entry is meshlet-cni's conflist entry for c. The plugin's lookup timeout
// and lock dir are left to its defaults.
func (c InstallConfig) Entry() map[string]any {
	b, err := json.Marshal(conflistEntry{
		Type:         contract.PluginType,
		Capabilities: map[string]bool{contract.CapabilityPodAnnotations: true},
		ConflistEntry: contract.ConflistEntry{
			Kubeconfig: c.KubeconfigPath, LogFile: c.LogFile, LogLevel: c.LogLevel,
			NodeAgentSocket: c.NodeAgentSocket, IptablesMode: c.IptablesMode,
		},
	})
	var e map[string]any
	if err == nil {
		err = json.Unmarshal(b, &e)
	}
	if err != nil {
		// Strings and a map of bools always marshal.
		panic(fmt.Sprintf("meshlet-cni conflist entry: %v", err))
	}
	return e
}

func (c InstallConfig) binaryPath() string { return filepath.Join(c.BinDir, contract.PluginType) }

func (c InstallConfig) check() error {
	for _, d := range []struct{ name, path string }{
		{"ConfDir", c.ConfDir}, {"BinDir", c.BinDir}, {"KubeconfigPath", c.KubeconfigPath},
	} {
		if !filepath.IsAbs(d.path) {
			return fmt.Errorf("install: %s %q is not an absolute path", d.name, d.path)
		}
	}
	// The plugin refuses a relative agent_socket, and so every ADD.
	if c.NodeAgentSocket != "" && !filepath.IsAbs(c.NodeAgentSocket) {
		return fmt.Errorf("install: NodeAgentSocket %q is not an absolute path", c.NodeAgentSocket)
	}
	if rel, err := filepath.Rel(c.ConfDir, c.KubeconfigPath); err == nil && !strings.HasPrefix(rel, "..") {
		return fmt.Errorf("install: KubeconfigPath %s is inside the CNI conf dir %s", c.KubeconfigPath, c.ConfDir)
	}
	return nil
}

// Result is what Install changed.
type Result struct {
	// BinaryWritten and KubeconfigWritten: the file differed and was
	// replaced.
	BinaryWritten, KubeconfigWritten bool
	// Config is the primary config, which now chains meshlet-cni;
	// Chained says it was rewritten.
	Config  string
	Chained bool
	// Replaced is the single-plugin config (.conf, .json) that Config,
	// a new .conflist, replaces, or "".
	Replaced string
}

// Install copies the binary, writes the kubeconfig, then chains
// meshlet-cni into the primary config, so that the runtime never runs an
// entry whose binary or credentials are missing. Each step is skipped when
// there is nothing to change.
func Install(c InstallConfig) (Result, error) {
	var r Result
	if err := c.check(); err != nil {
		return r, err
	}
	var err error
	if r.BinaryWritten, err = installBinary(c.Binary, c.binaryPath()); err != nil {
		return r, fmt.Errorf("install %s: %w", c.binaryPath(), err)
	}
	validate := func(tmp string) error { _, err := cni.ValidateKubeconfig(tmp); return err }
	if r.KubeconfigWritten, err = writeAtomic(c.KubeconfigPath, 0o600, bytes.NewReader(c.Kubeconfig), validate); err != nil {
		return r, fmt.Errorf("install meshlet-cni kubeconfig %s: %w", c.KubeconfigPath, err)
	}
	r.Config, r.Chained, r.Replaced, err = chainPrimary(c.ConfDir, c.Entry())
	return r, err
}

// chainPrimary chains entry into the primary config, in place. A
// single-plugin x.conf (or x.json) cannot hold a conflist (go-cni
// requires a type at the top of a .conf, which a conflist lacks), so it
// becomes x.conflist, created and written, then x.conf is removed.
// containerd ignores the Create but reloads on the Write, while x.conf,
// sorting first, still wins; the Remove then reloads it with x.conflist.
// Both never stay: a later call converts an x.conf the primary CNI
// writes again, overwriting x.conflist.
func chainPrimary(confDir string, entry map[string]any) (path string, changed bool, replaced string, err error) {
	path, err = PrimaryConfig(confDir)
	if err != nil {
		return "", false, "", err
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return path, false, "", err
	}
	out, changed, err := Chain(raw, isConflist(path), entry)
	if err != nil || !changed {
		if err != nil {
			err = fmt.Errorf("chain meshlet-cni into %s: %w", path, err)
		}
		return path, false, "", err
	}
	if isConflist(path) {
		return path, true, "", writeInPlace(path, out)
	}
	list := strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
	if err := writeInPlace(list, out); err != nil {
		return path, false, "", err
	}
	if err := os.Remove(path); err != nil {
		return list, true, "", fmt.Errorf("remove %s, now %s: %w", path, filepath.Base(list), err)
	}
	return list, true, path, syncDir(confDir)
}

// Uninstall removes meshlet-cni's entry from every conflist of the conf
// dir (a former primary may still carry it), then the binary and the
// kubeconfig. A single-plugin config Install turned into a conflist stays
// one: it means the same to the runtime.
func Uninstall(c InstallConfig) error {
	if err := c.check(); err != nil {
		return err
	}
	var errs []error
	lists, err := filepath.Glob(filepath.Join(c.ConfDir, "*.conflist"))
	if err != nil {
		return err
	}
	for _, f := range lists {
		raw, err := os.ReadFile(f)
		if err != nil || !HasEntry(raw) {
			continue
		}
		out, changed, err := Unchain(raw)
		if err == nil && changed {
			err = writeInPlace(f, out)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("unchain meshlet-cni from %s: %w", f, err))
		}
	}
	for _, f := range []string{c.binaryPath(), c.KubeconfigPath} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func installBinary(src, dst string) (bool, error) {
	f, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer f.Close()
	return writeAtomic(dst, 0o755, f, nil)
}

// writeAtomic gives path the content of r and mode perm unless it already
// has them: a temporary file in the same dir, written, synced, checked
// (check, if not nil, gets its path), renamed over path.
func writeAtomic(path string, perm os.FileMode, r io.ReadSeeker, check func(tmp string) error) (bool, error) {
	if same, err := sameContent(path, perm, r); err != nil || same {
		return false, err
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return false, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".meshlet-tmp-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	_, err = io.Copy(tmp, r)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil && check != nil {
		err = check(tmp.Name())
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	return err == nil, err
}

// sameContent: path exists with mode perm and r's content.
func sameContent(path string, perm os.FileMode, r io.Reader) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Mode() != perm {
		return false, err
	}
	a, b := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		na, erra := io.ReadFull(f, a)
		nb, errb := io.ReadFull(r, b)
		if !bytes.Equal(a[:na], b[:nb]) {
			return false, nil
		}
		if erra != nil || errb != nil {
			eof := func(e error) bool { return e == io.EOF || e == io.ErrUnexpectedEOF }
			if !eof(erra) || !eof(errb) {
				return false, errors.Join(ignoreEOF(erra), ignoreEOF(errb))
			}
			return true, nil
		}
	}
}

func ignoreEOF(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return nil
	}
	return err
}

// writeInPlace rewrites path through the same inode (a Write event, which
// containerd reloads on; see the package doc), creating it if needed with
// mode 0644.
func writeInPlace(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
