package cluster

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
)

// TestUpClearsCrashedRun kills every component of a running cluster with a
// pod on it (a crashed harness leaves shims, pod processes, netns mounts,
// the bridge and chains), then checks that Up recovers and Down leaves the
// host as it was.
func TestUpClearsCrashedRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the local cluster runs kubelet and containerd")
	}
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	c := New(root)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := c.Down(ctx); err != nil {
		t.Fatal(err)
	}
	base, err := HostBaseline()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Down(context.Background()) })
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	checkFixedPorts(t, c)
	startPod(t, ctx, c)

	files, _ := filepath.Glob(filepath.Join(c.Dir, "pids", "*.pid"))
	for _, f := range files {
		pid, exe, err := readPidFile(f)
		if err == nil && alive(pid, exe) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return len(c.recordedAlive()) == 0, nil
	}); err != nil {
		t.Fatalf("components survive SIGKILL: %v", c.recordedAlive())
	}
	if len(c.shimPids()) == 0 {
		t.Fatal("after the crash no runtime shim runs: the test would not exercise recovery")
	}

	if err := c.Up(ctx); err != nil {
		t.Fatalf("Up after a crash: %v", err)
	}
	startPod(t, ctx, c)
	if err := c.Down(ctx); err != nil {
		t.Fatalf("Down: %v", err)
	}
	left, err := c.Leftovers(base)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Fatalf("after Down these remain: %v", left)
	}
}

func startPod(t *testing.T, ctx context.Context, c *Cluster) {
	t.Helper()
	cs, err := c.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	// The namespace's ServiceAccount comes from the controller-manager.
	_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sleeper"},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{Name: "sleeper", Image: StaticClientImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sleep", "3600"}}},
		},
	}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := cs.CoreV1().Pods("default").Get(ctx, "sleeper", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("pod sleeper not Running: %v", err)
	}
}
