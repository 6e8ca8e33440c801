package cluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

const testContainerID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// A crashed run's init.pid may name a PID that has since been recycled by
// an unrelated process: crash cleanup must neither list nor kill it.
func TestStaleInitPidSpared(t *testing.T) {
	pid, exited := startSleep(t)
	c := &Cluster{Root: t.TempDir()}
	c.Dir = filepath.Join(c.Root, ".cluster")
	bundle := c.path("containerd", "state", "io.containerd.runtime.v2.task", "k8s.io", testContainerID)
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "init.pid"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatal(err)
	}

	if ts := c.tasks(); len(ts) != 0 {
		t.Errorf("an unrelated process counts as container %s: %+v", testContainerID[:12], ts)
	}
	if err := c.stopShims(); err != nil {
		t.Errorf("stopShims: %v", err)
	}
	select {
	case err := <-exited:
		t.Fatalf("stopShims signalled the unrelated pid %d: %v", pid, err)
	case <-time.After(200 * time.Millisecond):
	}
}

// A process in a cgroup named after the container counts as the
// container's; the same process outside it, or a short ID, does not.
func TestInContainerCgroup(t *testing.T) {
	pid, _ := startSleep(t)
	if inContainerCgroup(pid, testContainerID) {
		t.Fatal("a process outside the container's cgroup matches")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a cgroup")
	}
	root := "/sys/fs/cgroup/pids" // cgroup v1, as on this VM
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		root = "/sys/fs/cgroup" // cgroup v2
	}
	parent := filepath.Join(root, "meshlet-cluster-test")
	dir := filepath.Join(parent, testContainerID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create a test cgroup as root: %v", err)
	}
	// This runs before startSleep's cleanup kills the sleep: move it out
	// so that the cgroup is empty and can go.
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
		_ = os.Remove(parent)
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	if !inContainerCgroup(pid, testContainerID) {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
		t.Errorf("a process in cgroup %s does not match; its cgroups:\n%s", dir, b)
	}
	if inContainerCgroup(pid, testContainerID[:8]) || inContainerCgroup(pid, "") {
		t.Error("a short ID matches")
	}
}

// startSleep runs a sleep that the test kills and reaps at cleanup; exited
// reports its end.
func startSleep(t *testing.T) (pid int, exited <-chan error) {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := make(chan error, 1)
	go func() { ch <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
		}
	})
	return cmd.Process.Pid, ch
}
