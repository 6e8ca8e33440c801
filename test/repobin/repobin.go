// Package repobin finds the tools `make tools` and `make build` put in the
// repository's bin/, for tests that run them: go test runs in each
// package's directory, so a plain `go test ./pkg/` finds them without
// make test's PATH.
package repobin

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Find is name in the bin/ of the module that holds the working
// directory, or, failing that, on $PATH.
func Find(name string) (string, bool) {
	if dir, err := os.Getwd(); err == nil {
		for ; ; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				p := filepath.Join(dir, "bin", name)
				if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
					return p, true
				}
				break
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	p, err := exec.LookPath(name)
	return p, err == nil
}

// Need is Find's path of name, or skips tb saying which make target puts
// it in bin/: the tools are a real prerequisite, which make test has.
func Need(tb testing.TB, name, makeTarget string) string {
	tb.Helper()
	p, ok := Find(name)
	if !ok {
		tb.Skipf("no %s in the repo's bin/ or on $PATH: %s builds it", name, makeTarget)
	}
	return p
}
