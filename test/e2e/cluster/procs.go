package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A pid file holds "<pid> <executable>": stopping checks that the PID still
// runs that executable, so a recycled PID is never signalled.

func (c *Cluster) pidFile(name string) string { return filepath.Join(c.Dir, "pids", name+".pid") }

// start launches a long-running component in its own session (it outlives
// the harness process) with its output in logs/<name>.log.
func (c *Cluster) start(name string, argv []string, env ...string) error {
	for _, d := range []string{"pids", "logs"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o755); err != nil {
			return err
		}
	}
	logf, err := os.OpenFile(filepath.Join(c.Dir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid))
	if exe == "" {
		exe, _ = exec.LookPath(argv[0])
	}
	rec := fmt.Sprintf("%d %s\n", cmd.Process.Pid, exe)
	if err := os.WriteFile(c.pidFile(name), []byte(rec), 0o644); err != nil {
		_ = cmd.Process.Kill()
		return err
	}
	// Reap it if it dies while this process lives, so liveness checks are true.
	go func() { _ = cmd.Wait() }()
	return nil
}

// alive reports whether the recorded process still runs its executable.
func alive(pid int, exe string) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Field 3 is the state; a zombie has exited.
	if i := strings.LastIndexByte(string(stat), ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
		return false
	}
	if exe == "" {
		return true
	}
	got, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && strings.TrimSuffix(got, " (deleted)") == exe
}

func readPidFile(path string) (int, string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, "", err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, "", fmt.Errorf("%s: empty pid file", path)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 1 {
		return 0, "", fmt.Errorf("%s: bad pid %q", path, f[0])
	}
	exe := ""
	if len(f) > 1 {
		exe = f[1]
	}
	return pid, exe, nil
}

// stopPid sends SIGTERM, waits up to grace, then SIGKILLs.
func stopPid(pid int, exe string, grace time.Duration) error {
	return stopProc(pid, exe, func() bool { return alive(pid, exe) }, grace)
}

// stopProc stops pid while ours says it is still the process meant: it is
// asked again before each signal, so a PID recycled meanwhile is spared.
func stopProc(pid int, what string, ours func() bool, grace time.Duration) error {
	if !ours() {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !ours() {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !ours() {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100; i++ {
		if !ours() {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("pid %d (%s) survived SIGKILL", pid, what)
}

// stop stops the component recorded under name; a missing pid file is fine.
func (c *Cluster) stop(name string, grace time.Duration) error {
	pid, exe, err := readPidFile(c.pidFile(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := stopPid(pid, exe, grace); err != nil {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	return os.Remove(c.pidFile(name))
}

// recordedAlive lists the recorded components that still run.
func (c *Cluster) recordedAlive() []string {
	files, _ := filepath.Glob(filepath.Join(c.Dir, "pids", "*.pid"))
	var out []string
	for _, f := range files {
		if pid, exe, err := readPidFile(f); err == nil && alive(pid, exe) {
			out = append(out, fmt.Sprintf("%s (pid %d)", strings.TrimSuffix(filepath.Base(f), ".pid"), pid))
		}
	}
	return out
}
