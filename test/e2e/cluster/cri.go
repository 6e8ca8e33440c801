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
	"google.golang.org/grpc/credentials/insecure"
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

func (c *Cluster) shimPidFiles() []string {
	files, _ := filepath.Glob(c.path("containerd", "state", "io.containerd.runtime.v2.task", "*", "*", "shim.pid"))
	return files
}

// shimPids lists runtime shims of this cluster that still run.
func (c *Cluster) shimPids() []string {
	var out []string
	for _, f := range c.shimPidFiles() {
		if pid, err := readInt(f); err == nil && alive(pid, shimExe) {
			out = append(out, fmt.Sprintf("containerd-shim (pid %d, %s)", pid, filepath.Base(filepath.Dir(f))))
		}
	}
	return out
}

// stopShims ends what a crashed run left: each container's init process
// (only if its parent is the recorded shim) and then the shim itself.
func (c *Cluster) stopShims() error {
	var errs []error
	for _, f := range c.shimPidFiles() {
		shim, err := readInt(f)
		if err != nil || !alive(shim, shimExe) {
			continue
		}
		inits, _ := filepath.Glob(filepath.Join(filepath.Dir(f), "..", "*", "init.pid"))
		for _, i := range inits {
			if pid, err := readInt(i); err == nil && parentOf(pid) == shim {
				errs = append(errs, stopPid(pid, "", 5*time.Second))
			}
		}
		errs = append(errs, stopPid(shim, shimExe, 5*time.Second))
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
