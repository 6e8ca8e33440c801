package consultest

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/repobin"
)

// StartAgent runs bin/consul agent with args and cfg (written to
// <dir>/<name>.hcl) until the test ends, when it is stopped by its PID;
// its log, <dir>/<name>.log, is shown if the test failed. start, when not
// nil, starts the command in its place (in a network namespace, say).
func StartAgent(t testing.TB, dir, name, cfg string, args []string, start func(*exec.Cmd) error) {
	t.Helper()
	bin := repobin.Need(t, "consul", "make tools")
	path := filepath.Join(dir, name+".hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append(append([]string{"agent"}, args...), "-config-file="+path)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if start == nil {
		start = (*exec.Cmd).Start
	}
	if err := start(cmd); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("consul %s log:\n%s", name, b[max(0, len(b)-3000):])
		}
	})
}
