package install

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://10.0.0.1:6443", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: abc}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
`

// testNode is a node's dirs in a temp dir, with a primary config.
func testNode(t *testing.T, primary, content string) InstallConfig {
	t.Helper()
	root := t.TempDir()
	c := InstallConfig{
		ConfDir:        filepath.Join(root, "etc/cni/net.d"),
		BinDir:         filepath.Join(root, "opt/cni/bin"),
		Binary:         filepath.Join(root, "image/meshlet-cni"),
		Kubeconfig:     []byte(testKubeconfig),
		KubeconfigPath: filepath.Join(root, "var/lib/meshlet/cni/kubeconfig"),
		LogLevel:       "debug",
	}
	for _, d := range []string{c.ConfDir, c.BinDir, filepath.Dir(c.Binary)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, c.Binary, "#!/bin/sh\necho meshlet-cni\n")
	if primary != "" {
		writeFile(t, filepath.Join(c.ConfDir, primary), content)
	}
	return c
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode()
}

func TestInstall(t *testing.T) {
	c := testNode(t, "10-bridge.conflist", bridgeList)
	conflist := filepath.Join(c.ConfDir, "10-bridge.conflist")
	before, _ := os.Stat(conflist)

	r, err := Install(c)
	if err != nil {
		t.Fatal(err)
	}
	if r != (Result{BinaryWritten: true, KubeconfigWritten: true, Config: conflist, Chained: true}) {
		t.Errorf("first Install: %+v", r)
	}
	if m := mode(t, c.binaryPath()); m != 0o755 {
		t.Errorf("binary mode %v", m)
	}
	if m := mode(t, c.KubeconfigPath); m != 0o600 {
		t.Errorf("kubeconfig mode %v", m)
	}
	after, _ := os.Stat(conflist)
	if !os.SameFile(before, after) {
		t.Error("the conflist was replaced, not rewritten in place: containerd 1.6 would not reload it")
	}
	raw, _ := os.ReadFile(conflist)
	if !HasEntry(raw) || !strings.Contains(string(raw), c.KubeconfigPath) {
		t.Errorf("conflist not chained:\n%s", raw)
	}
	left, _ := os.ReadDir(c.BinDir)
	if len(left) != 1 {
		t.Errorf("bin dir holds %d files (a temporary file left?)", len(left))
	}

	if r, err := Install(c); err != nil || r != (Result{Config: conflist}) {
		t.Errorf("second Install: %+v, %v", r, err)
	}

	// A new binary and a new log level: both rewritten.
	writeFile(t, c.Binary, "#!/bin/sh\necho meshlet-cni v2\n")
	c.LogLevel = "info"
	if r, err := Install(c); err != nil || r != (Result{BinaryWritten: true, Config: conflist, Chained: true}) {
		t.Errorf("upgrade: %+v, %v", r, err)
	}
	got, _ := os.ReadFile(c.binaryPath())
	if string(got) != "#!/bin/sh\necho meshlet-cni v2\n" {
		t.Errorf("binary not upgraded: %q", got)
	}

	if err := Uninstall(c); err != nil {
		t.Fatal(err)
	}
	raw, _ = os.ReadFile(conflist)
	if HasEntry(raw) {
		t.Errorf("entry left after Uninstall:\n%s", raw)
	}
	for _, f := range []string{c.binaryPath(), c.KubeconfigPath} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", f, err)
		}
	}
	if err := Uninstall(c); err != nil {
		t.Errorf("second Uninstall: %v", err)
	}
}

func TestInstallConvertsConf(t *testing.T) {
	c := testNode(t, "10-flannel.conf", bridgeConf)
	r, err := Install(c)
	if err != nil {
		t.Fatal(err)
	}
	conf, list := filepath.Join(c.ConfDir, "10-flannel.conf"), filepath.Join(c.ConfDir, "10-flannel.conflist")
	if r.Config != list || r.Replaced != conf || !r.Chained {
		t.Errorf("%+v", r)
	}
	if _, err := os.Stat(conf); !os.IsNotExist(err) {
		t.Errorf("%s left beside the conflist: %v", conf, err)
	}
	if p, err := PrimaryConfig(c.ConfDir); err != nil || p != list {
		t.Errorf("primary %s, %v", p, err)
	}
	// The primary CNI writes its .conf again: converted again, into the
	// same conflist, and only one of the two stays.
	writeFile(t, conf, bridgeConf)
	if r, err := Install(c); err != nil || r.Config != list || r.Replaced != conf {
		t.Errorf("%+v, %v", r, err)
	}
	if _, err := os.Stat(conf); !os.IsNotExist(err) {
		t.Errorf("%s left beside the conflist: %v", conf, err)
	}
}

func TestInstallRefuses(t *testing.T) {
	t.Run("kubeconfig in the conf dir", func(t *testing.T) {
		c := testNode(t, "10.conflist", bridgeList)
		c.KubeconfigPath = filepath.Join(c.ConfDir, "meshlet-cni.d", "kubeconfig")
		if _, err := Install(c); err == nil || !strings.Contains(err.Error(), "inside the CNI conf dir") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("relative dir", func(t *testing.T) {
		c := testNode(t, "10.conflist", bridgeList)
		c.BinDir = "opt/cni/bin"
		if _, err := Install(c); err == nil || !strings.Contains(err.Error(), "not an absolute path") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("relative agent socket", func(t *testing.T) {
		c := testNode(t, "10.conflist", bridgeList)
		c.NodeAgentSocket = "cni.sock"
		if _, err := Install(c); err == nil || !strings.Contains(err.Error(), `NodeAgentSocket "cni.sock" is not an absolute path`) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("kubeconfig without credentials", func(t *testing.T) {
		c := testNode(t, "10.conflist", bridgeList)
		if _, err := Install(c); err != nil {
			t.Fatal(err)
		}
		good, _ := os.ReadFile(c.KubeconfigPath)
		c.Kubeconfig = bytes.Replace(c.Kubeconfig, []byte("{token: abc}"), []byte("{}"), 1)
		if _, err := Install(c); err == nil || !strings.Contains(err.Error(), "no token") {
			t.Errorf("err = %v", err)
		}
		if kept, _ := os.ReadFile(c.KubeconfigPath); !bytes.Equal(kept, good) {
			t.Error("a kubeconfig that does not validate replaced the good one")
		}
		left, _ := os.ReadDir(filepath.Dir(c.KubeconfigPath))
		if len(left) != 1 {
			t.Errorf("%d files beside the kubeconfig (a temporary file left?)", len(left))
		}
	})
	t.Run("no primary config", func(t *testing.T) {
		c := testNode(t, "", "")
		if _, err := Install(c); err == nil || !strings.Contains(err.Error(), "no CNI network config") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("missing binary", func(t *testing.T) {
		c := testNode(t, "10.conflist", bridgeList)
		c.Binary += ".missing"
		if _, err := Install(c); err == nil {
			t.Error("no error")
		}
		raw, _ := os.ReadFile(filepath.Join(c.ConfDir, "10.conflist"))
		if HasEntry(raw) {
			t.Error("chained without its binary")
		}
	})
}
