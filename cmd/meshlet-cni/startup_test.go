package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkStartup: the plugin is a fresh process per pod, so its start-up
// is part of every ADD. It execs, in the same run, an empty Go program (the
// floor), an empty program that imports all meshlet-cni imports (what the
// dependencies cost to load and initialize), meshlet-cni answering VERSION, and a probe that loads a
// kubeconfig with client-go and builds a metadata client (what meshlet-cni
// would cost with client-go), and reports each median.
func BenchmarkStartup(b *testing.B) {
	dir := b.TempDir()
	build := func(name, pkg string) string {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("build %s: %v: %s", pkg, err, o)
		}
		return out
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		b.Fatal(err)
	}
	runs := []struct {
		name string
		cmd  func() *exec.Cmd
	}{
		{"empty-main", func() *exec.Cmd { return exec.Command(build("empty", "./testdata/emptymain")) }},
		{"imports-only", func() *exec.Cmd { return exec.Command(build("imports", "./testdata/importsonly")) }},
		{"meshlet-cni-version", func() *exec.Cmd {
			c := exec.Command(build("meshlet-cni", "."))
			c.Env = []string{"CNI_COMMAND=VERSION"}
			c.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
			return c
		}},
		{"client-go-probe", func() *exec.Cmd { return exec.Command(build("probe", "./testdata/clientgoprobe"), kubeconfig) }},
	}
	for _, r := range runs {
		proto := r.cmd()
		b.Run(r.name, func(b *testing.B) {
			var d []time.Duration
			for i := 0; i < b.N; i++ {
				c := exec.Command(proto.Path, proto.Args[1:]...)
				c.Env = proto.Env
				if proto.Stdin != nil {
					c.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
				}
				t0 := time.Now()
				if out, err := c.CombinedOutput(); err != nil {
					b.Fatalf("%v: %s", err, out)
				}
				d = append(d, time.Since(t0))
			}
			slices.Sort(d)
			b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, "p50-ms")
		})
	}
}
