package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// writeCNI lays out the CNI dirs containerd reads: the reference plugins
// (bin/cni, built by make build) and a conflist bridge + host-local + portmap-free
// chain with no default route and no masquerade.
func (c *Cluster) writeCNI() error {
	if err := os.MkdirAll(c.CNIBinDir(), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(c.CNIConfDir(), 0o755); err != nil {
		return err
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		src := filepath.Join(c.refPluginDir(), p)
		if err := copyFile(src, filepath.Join(c.CNIBinDir(), p), 0o755); err != nil {
			return fmt.Errorf("install CNI plugin %s: %w", p, err)
		}
	}
	return c.writeConflist(c.Conflist())
}

// ConflistFile is the node's conflist, the one containerd reads.
func (c *Cluster) ConflistFile() string {
	return filepath.Join(c.CNIConfDir(), "10-meshlet-pods.conflist")
}

// writeConflist rewrites the conflist in place. containerd's CRI plugin
// ignores Create events in the conf dir (a file renamed into it is one) and
// reloads only on Write/Rename/Remove, so an atomic rename would go unseen.
func (c *Cluster) writeConflist(content string) error {
	f, err := os.OpenFile(c.ConflistFile(), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte(content)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// refPluginDir holds the reference plugins make build compiles.
func (c *Cluster) refPluginDir() string { return c.bin("cni") }

// Conflist is the node's primary CNI network: bridge + host-local with no
// default route and no masquerade (pods reach the node, on-link, and
// Services only), with the extra plugins chained after it.
func (c *Cluster) Conflist(chained ...map[string]any) string {
	bridge := map[string]any{
		"type": "bridge", "bridge": Bridge, "isGateway": true, "isDefaultGateway": false,
		"ipMasq": false, "hairpinMode": true,
		"ipam": map[string]any{
			"type":    "host-local",
			"dataDir": c.path("cni", "ipam"),
			"ranges":  [][]map[string]string{{{"subnet": PodCIDR, "gateway": NodeIP}}},
			"routes":  []map[string]string{{"dst": ServiceCIDR}},
		},
	}
	plugins := append([]map[string]any{bridge}, chained...)
	b, _ := json.MarshalIndent(map[string]any{"cniVersion": "1.0.0", "name": NetworkName, "plugins": plugins}, "", "  ")
	return string(b) + "\n"
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
