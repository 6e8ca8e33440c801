package kind

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/meshlet/meshlet/test/repobin"
)

// stubs stand in for the commands run.sh runs, each appending its argv to
// the log; kubectl answers the two lookups run.sh makes and its
// port-forward idles (recording its PID) until run.sh stops it.
var stubs = map[string]string{
	"docker":  `exit 0`,
	"kind":    `[ "$1" = get ] && [ -n "${KIND_EXISTING:-}" ] && echo "$KIND_EXISTING"; exit 0`,
	"consul":  `exit 0`,
	"go":      `exit "${GO_EXIT:-0}"`,
	"make":    `exit 0`,
	"kubectl": `case "$*" in *"get nodes"*) echo kind-worker ;; *"get pods"*) echo pod/consul-client-x ;; *port-forward*) echo $$ >"$STUB_DIR/port-forward.pid"; exec sleep 300 ;; esac`,
	// helm renders for real: run.sh reads the Envoy image from it.
	"helm": `[ "$1" = template ] && exec "$REAL_HELM" "$@"; exit 0`,
}

// runFlow runs a copy of run.sh, in a tree holding what it reads, with
// the stubs first on $PATH; it returns the script's exit code and what
// the stubs were asked.
func runFlow(t *testing.T, env ...string) (int, []string) {
	t.Helper()
	realHelm := repobin.Need(t, "helm", "make tools")
	root := t.TempDir()
	stubDir := filepath.Join(root, "bin")
	for _, d := range []string{"test/e2e/kind", "hack", "bin", "deploy"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"run.sh", "kind-config.yaml", "consul-values.yaml", "meshlet-values.yaml", "Dockerfile"} {
		if err := os.WriteFile(filepath.Join(root, "test/e2e/kind", f), read(t, f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-r", "../../../deploy/daemonset", filepath.Join(root, "deploy")).CombinedOutput(); err != nil {
		t.Fatalf("copy the chart: %v: %s", err, out)
	}
	log := filepath.Join(root, "log")
	write := func(path, body string) {
		script := "#!/bin/bash\necho \"$(basename \"$0\") $*\" >>" + log + "\n" + body + "\n"
		if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "hack", "tools.sh"), "exit 0")
	for name, body := range stubs {
		write(filepath.Join(stubDir, name), body)
	}
	t.Cleanup(func() { // a port-forward run.sh failed to stop, stopped by its PID
		if b, err := os.ReadFile(filepath.Join(stubDir, "port-forward.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && syscall.Kill(pid, 0) == nil {
				t.Errorf("run.sh left its port-forward (pid %d) running", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	cmd := exec.Command("bash", filepath.Join(root, "test/e2e/kind/run.sh"))
	cmd.Env = append(os.Environ(), "PATH="+stubDir+":"+os.Getenv("PATH"), "STUB_DIR="+stubDir, "REAL_HELM="+realHelm)
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	calls, _ := os.ReadFile(log)
	t.Logf("run.sh exited %d:\n%s\nstubs asked:\n%s", code, out, calls)
	return code, strings.Split(strings.TrimSpace(string(calls)), "\n")
}

// TestRunScriptFlow: with every tool stubbed, run.sh does its steps in
// order with the arguments the suite and the charts need, passes the
// suite's exit code on, and in every case stops its port-forward and
// deletes the cluster it created (not one that was there before).
func TestRunScriptFlow(t *testing.T) {
	code, calls := runFlow(t)
	if code != 0 {
		t.Fatalf("run.sh exited %d, want 0", code)
	}
	want := []string{
		"docker info",
		"tools.sh kind_prereqs",
		"helm show chart hashicorp/consul --version " + consulChartVersion,
		"make -C ",
		"docker build -f ", // static-server
		"docker build -f ", // static-client
		"docker build -f ", // pause
		"helm template meshlet ",
		"docker pull envoyproxy/envoy:v",
		"kind create cluster --name meshlet-e2e --config ",
		"kind load docker-image --name meshlet-e2e localhost/meshlet/meshlet:dev",
		"kind load docker-image --name meshlet-e2e localhost/meshlet/static-server:dev",
		"kind load docker-image --name meshlet-e2e localhost/meshlet/static-client:dev",
		"kind load docker-image --name meshlet-e2e localhost/meshlet/pause:dev",
		"kind load docker-image --name meshlet-e2e envoyproxy/envoy:v",
		"helm install consul hashicorp/consul --version " + consulChartVersion + " --namespace consul",
		"helm install meshlet ",
		"kubectl -n consul port-forward pod/consul-client-x 28500:8500",
		"go test -count=1 -v -timeout 40m ./test/e2e/ -run . -args -e2e.kubeconfig=",
		"kind delete cluster --name meshlet-e2e",
	}
	i := 0
	for _, c := range calls {
		if i < len(want) && strings.HasPrefix(c, want[i]) {
			i++
		}
	}
	if i < len(want) {
		t.Fatalf("run.sh's calls lack, in order, %q (after %d of %d)", want[i], i, len(want))
	}
	for _, c := range calls {
		if strings.HasPrefix(c, "go test") && !strings.Contains(c, "-e2e.consul-addr=127.0.0.1:28500 -e2e.data-plane=envoy") {
			t.Errorf("%s: want the forwarded agent and data plane envoy", c)
		}
	}

	t.Run("the suite fails", func(t *testing.T) {
		code, calls := runFlow(t, "GO_EXIT=3")
		if code != 3 || !strings.HasPrefix(calls[len(calls)-1], "kind delete cluster") {
			t.Errorf("run.sh exited %d, last call %q; want the suite's 3, and the cluster deleted", code, calls[len(calls)-1])
		}
	})
	t.Run("the cluster exists", func(t *testing.T) {
		code, calls := runFlow(t, "KIND_EXISTING=meshlet-e2e")
		for _, c := range calls {
			if strings.HasPrefix(c, "kind delete") || strings.HasPrefix(c, "kind create") || strings.HasPrefix(c, "docker build") {
				t.Errorf("with a cluster of that name already there, run.sh ran %q", c)
			}
		}
		if code == 0 {
			t.Error("run.sh exited 0 with a cluster of that name already there")
		}
	})
}
