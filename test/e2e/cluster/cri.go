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

// tasks lists the recorded containers whose init process still runs. A
// crashed run leaves init.pid files behind whose PID may since have been
// recycled, so a live PID counts only if the process sits in the
// container's own cgroup (see inContainerCgroup).
func (c *Cluster) tasks() []task {
	files, _ := filepath.Glob(c.path("containerd", "state", "io.containerd.runtime.v2.task", "*", "*", "init.pid"))
	var out []task
	for _, f := range files {
		pid, err := readInt(f)
		bundle := filepath.Dir(f)
		if err != nil || !alive(pid, "") || !inContainerCgroup(pid, filepath.Base(bundle)) {
			continue
		}
		t := task{bundle: bundle, init: pid}
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
		id := filepath.Base(t.bundle)
		ours := func() bool { return alive(t.init, "") && inContainerCgroup(t.init, id) }
		errs = append(errs, stopProc(t.init, "init of container "+id[:12], ours, 5*time.Second))
	}
	for _, t := range ts {
		if t.shim != 0 {
			errs = append(errs, stopPid(t.shim, shimExe, 5*time.Second))
		}
	}
	return errors.Join(errs...)
}

// inContainerCgroup reports whether pid's cgroup path names the container
// ID (the bundle directory's name). containerd puts every container in
// <pod cgroup from kubelet>/<container ID> (in every hierarchy on this VM),
// and a process starts in its parent's cgroup: a recycled PID belongs to
// whoever forked it, never to a dead container's cgroup. The ID is 64 hex
// digits, so a substring match is as strict as a path-element match and
// also fits the systemd driver's cri-containerd-<ID>.scope.
func inContainerCgroup(pid int, id string) bool {
	if len(id) < 12 {
		return false // not a runtime ID: never match on a short name
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		// hierarchy-ID:controllers:path
		if f := strings.SplitN(line, ":", 3); len(f) == 3 && strings.Contains(f[2], id) {
			return true
		}
	}
	return false
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
