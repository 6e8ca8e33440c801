package kindcluster

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

//go:embed docker-shim.sh
var shimScript string

// dockerShim returns the directory of a docker wrapper for kind when this
// Docker engine cannot start a --privileged container, and "" when it
// can. kind runs every node --privileged and every command in a node with
// docker exec --privileged; an engine whose own bounding set lacks a
// capability it grants privileged containers (Docker 20.10 on a VM
// without CAP_SYS_RESOURCE) fails both with "unable to apply caps". The
// wrapper gives nodes every other capability instead, and the node
// image's entrypoint copes with what --privileged would have done
// (writable cgroup mounts, containerd's OOM scores).
func (c *Cluster) dockerShim(ctx context.Context, image string) (string, error) {
	_, err := runCmd(ctx, nil, "docker", "run", "--rm", "--privileged", "--entrypoint", "/bin/true", image)
	if err == nil {
		return "", nil
	}
	if !strings.Contains(err.Error(), "apply caps") {
		return "", fmt.Errorf("a privileged container does not start: %w", err)
	}
	real, err := exec.LookPath("docker")
	if err != nil {
		return "", err
	}
	dir := c.dir("shim")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	script := strings.ReplaceAll(shimScript, "@DOCKER@", real)
	if err := os.WriteFile(dir+"/docker", []byte(script), 0o755); err != nil {
		return "", err
	}
	c.Log.Warn("this Docker engine cannot run --privileged containers: kind runs through the shim", "shim", dir+"/docker")
	return dir, nil
}
