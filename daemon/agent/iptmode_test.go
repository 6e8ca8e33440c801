package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/iptables"
	"github.com/meshlet/meshlet/kubeclient/kubeclienttest"
)

// syncBuffer is a log sink the node agent's goroutines share with the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const primaryConflist = `{"cniVersion":"1.0.0","name":"kindnet","plugins":[{"type":"ptp"}]}`

// entryMode reads meshlet-cni's entry in the primary conflist: whether
// there is one, and its iptables_mode. The installer rewrites the file in
// place, so a read may find it partly written: not chained.
func entryMode(path string) (chained bool, mode string, err error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return false, "", err
	}
	var list struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if json.Unmarshal(raw, &list) != nil {
		return false, "", nil
	}
	for _, p := range list.Plugins {
		if p["type"] == contract.PluginType {
			m, _ := p["iptables_mode"].(string)
			return true, m, nil
		}
	}
	return false, "", nil
}

// waitEntry waits until meshlet-cni's entry is chained with mode, and
// returns the mode it last saw.
func waitEntry(t *testing.T, path, mode string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		chained, got, err := entryMode(path)
		if err != nil {
			t.Fatal(err)
		}
		if (chained && got == mode) || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIptablesModeOneValue: the host's backend cannot be told at start
// (kube-proxy has written no rules yet) and can later. The failure is
// logged, and once the backend is known meshlet-cni's entry names it and
// the repair checks it: the plugin writes a pod's rules into the backend
// the repair looks in.
func TestIptablesModeOneValue(t *testing.T) {
	dir := t.TempDir()
	confDir, binDir := filepath.Join(dir, "net.d"), filepath.Join(dir, "bin")
	for _, d := range []string{confDir, binDir, filepath.Join(dir, "proc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	primary := filepath.Join(confDir, "10-kindnet.conflist")
	binary := filepath.Join(dir, "meshlet-cni")
	for path, content := range map[string]string{primary: primaryConflist, binary: "#!/bin/sh\n"} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	cs := fake.NewClientset()
	cs.PrependReactor("create", "serviceaccounts", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authv1.TokenRequest{Status: authv1.TokenRequestStatus{Token: "tok",
			ExpirationTimestamp: metav1.NewTime(time.Now().Add(time.Hour))}}, nil
	})
	consul, err := capi.NewClient(&capi.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	var detected atomic.Bool
	var detections atomic.Int32
	logs := &syncBuffer{}
	cfg := Config{NodeName: "node-1", Workers: 1, ResyncInterval: time.Second, IptablesMode: "auto", HostRoot: dir,
		CNI: CNIConfig{Enabled: true, BinDir: binDir, ConfDir: confDir, Binary: binary,
			KubeconfigPath: filepath.Join(dir, "meshlet-cni.kubeconfig"), Namespace: "meshlet", ServiceAccount: "meshlet-cni",
			TokenTTL: time.Hour, APIServer: "https://10.0.0.1:6443"},
		Repair: RepairConfig{Mode: "auto", Interval: time.Hour, ProcRoot: filepath.Join(dir, "proc")},
		detectIptablesMode: func() (iptables.Mode, error) {
			detections.Add(1)
			if !detected.Load() {
				return "", errors.New("no iptables rules in this network namespace to tell the backend by")
			}
			return iptables.ModeLegacy, nil
		},
	}
	a, err := New(cfg, kubeclienttest.FromClientset(cs), consul, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	a.events = record.NewFakeRecorder(100)
	if got := logs.String(); !strings.Contains(got, "no iptables rules in this network namespace") ||
		!strings.Contains(got, "repair of unprotected pods waits") {
		t.Errorf("the failed detection, and what it means for the node, are not logged; the log:\n%s", got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := a.runInstaller(ctx); err != nil {
			t.Error(err)
		}
	}()
	if got := waitEntry(t, primary, ""); got != "" {
		t.Fatalf("before the backend is known the entry has iptables_mode %q, want none (the plugin detects)", got)
	}

	detected.Store(true)
	wg.Add(1)
	go func() { defer wg.Done(); a.runRepair(ctx) }()
	got := waitEntry(t, primary, string(iptables.ModeLegacy))
	if got != string(iptables.ModeLegacy) {
		t.Errorf("once the backend is known the entry has iptables_mode %q, want %q", got, iptables.ModeLegacy)
	}
	// The entry is chained again with the mode, not as it was at start.
	if err := os.WriteFile(primary, []byte(primaryConflist), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := waitEntry(t, primary, string(iptables.ModeLegacy)); got != string(iptables.ModeLegacy) {
		t.Errorf("chained again, the entry has iptables_mode %q, want %q", got, iptables.ModeLegacy)
	}

	cancel()
	wg.Wait()
	entry := waitEntry(t, primary, a.repairer.IptablesMode)
	if a.repairer.IptablesMode != entry {
		t.Errorf("the repair checks %q, the plugin's entry says %q", a.repairer.IptablesMode, entry)
	}
	if n := detections.Load(); n != 2 {
		t.Errorf("detected %d times, want 2: failing at start, then once for good", n)
	}
}
