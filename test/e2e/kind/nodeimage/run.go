package nodeimage

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
)

var lookPath = exec.LookPath

// run runs a command and returns its trimmed stdout; a failure carries
// the command line and its stderr.
func run(ctx context.Context, stdin io.Reader, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		line := strings.Join(append([]string{name}, args...), " ")
		if len(line) > 200 {
			line = line[:200] + "…"
		}
		return "", fmt.Errorf("%s: %w: %s", line, err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

func docker(ctx context.Context, args ...string) (string, error) {
	return run(ctx, nil, "docker", args...)
}

// imageExists says whether Docker holds the image ref.
func imageExists(ctx context.Context, ref string) bool {
	_, err := docker(ctx, "image", "inspect", "--format", "{{.Id}}", ref)
	return err == nil
}

// pruneImages removes this package's images with label key that are not
// keep: the stages a newer build replaced.
func pruneImages(ctx context.Context, key, keep string) error {
	out, err := docker(ctx, "image", "ls", "--filter", "label="+key, "--format", "{{.Repository}}:{{.Tag}}")
	if err != nil {
		return err
	}
	for _, ref := range strings.Fields(out) {
		if ref == keep {
			continue
		}
		if _, err := docker(ctx, "image", "rm", ref); err != nil {
			return err
		}
	}
	return nil
}
