package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func (c *Cluster) criClient() (runtime.RuntimeServiceClient, func(), error) {
	conn, err := grpc.NewClient("unix://"+c.containerdSock(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return runtime.NewRuntimeServiceClient(conn), func() { conn.Close() }, nil
}

func (c *Cluster) runtimeReady(ctx context.Context) error {
	if _, err := os.Stat(c.containerdSock()); err != nil {
		return err
	}
	rt, done, err := c.criClient()
	if err != nil {
		return err
	}
	defer done()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = rt.Version(ctx, &runtime.VersionRequest{})
	return err
}

// removeSandboxes stops and removes every pod sandbox through the CRI, so
// containerd runs CNI DEL for each (as kubelet would) and removes its netns.
func (c *Cluster) removeSandboxes(ctx context.Context) error {
	pid, exe, err := readPidFile(c.pidFile("containerd"))
	if err != nil || !alive(pid, exe) {
		return nil // crashed run: stopShims and restoreHost clean up instead
	}
	rt, done, err := c.criClient()
	if err != nil {
		return err
	}
	defer done()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	list, err := rt.ListPodSandbox(ctx, &runtime.ListPodSandboxRequest{})
	if status.Code(err) == codes.Unavailable {
		c.Log.Warn("containerd does not answer; its containers are stopped by PID instead", "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("list pod sandboxes: %w", err)
	}
	var errs []error
	for _, sb := range list.Items {
		if _, err := rt.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stop sandbox %s/%s: %w", sb.Metadata.Namespace, sb.Metadata.Name, err))
			continue
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			errs = append(errs, fmt.Errorf("remove sandbox %s/%s: %w", sb.Metadata.Namespace, sb.Metadata.Name, err))
		}
	}
	return errors.Join(errs...)
}

const shimExe = "/usr/bin/containerd-shim-runc-v2"

// task is a container the runtime recorded: its init process (init.pid in
// the task's bundle) and the shim that is that process's parent (runc v2
// shims do not record their own PID; one shim serves a whole pod).
type task struct {
	bundle     string
	init, shim int
}

func (c *Cluster) tasks() []task {
	files, _ := filepath.Glob(c.path("containerd", "state", "io.containerd.runtime.v2.task", "*", "*", "init.pid"))
	var out []task
	for _, f := range files {
		pid, err := readInt(f)
		if err != nil || !alive(pid, "") {
			continue
		}
		t := task{bundle: filepath.Dir(f), init: pid}
		if pp := parentOf(pid); pp > 1 && alive(pp, shimExe) {
			t.shim = pp
		}
		out = append(out, t)
	}
	return out
}

// shimPids lists runtime shims and container processes of this cluster
// that still run.
func (c *Cluster) shimPids() []string {
	var out []string
	for _, t := range c.tasks() {
		out = append(out, fmt.Sprintf("container %s (init pid %d, shim pid %d)", filepath.Base(t.bundle)[:12], t.init, t.shim))
	}
	return out
}

// stopShims ends what a crashed run left: each container's init process,
// then its shim.
func (c *Cluster) stopShims() error {
	var errs []error
	ts := c.tasks()
	for _, t := range ts {
		errs = append(errs, stopPid(t.init, "", 5*time.Second))
	}
	for _, t := range ts {
		if t.shim != 0 {
			errs = append(errs, stopPid(t.shim, shimExe, 5*time.Second))
		}
	}
	return errors.Join(errs...)
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func parentOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}
