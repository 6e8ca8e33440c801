package repobin

import (
	"os"
	"path/filepath"
	"testing"
)

// TestFind: the module's bin/ first, from any directory below the module
// root; then $PATH; else not found.
func TestFind(t *testing.T) {
	root := t.TempDir()
	for _, f := range []string{"go.mod", "bin/tool", "pkg/sub/x.go", "elsewhere/other"} {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(filepath.Join(root, "pkg", "sub"))
	t.Setenv("PATH", filepath.Join(root, "elsewhere"))
	if p, ok := Find("tool"); !ok || p != filepath.Join(root, "bin", "tool") {
		t.Errorf("Find(tool) = %q, %v; want the module's bin/tool", p, ok)
	}
	if p, ok := Find("other"); !ok || p != filepath.Join(root, "elsewhere", "other") {
		t.Errorf("Find(other) = %q, %v; want it from $PATH", p, ok)
	}
	if p, ok := Find("absent"); ok {
		t.Errorf("Find(absent) = %q, found", p)
	}
}
