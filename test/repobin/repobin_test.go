package repobin

import (
	"fmt"
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

// TestNeed: the path when found; a skip naming the tool and the make
// target when not.
func TestNeed(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "tool"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(root) // no go.mod above a temp dir: $PATH decides
	t.Setenv("PATH", root)
	r := &skipRecorder{TB: t}
	if p := Need(r, "tool", "make tools"); p != filepath.Join(root, "tool") || r.skip != "" {
		t.Errorf("Need(tool) = %q, skip %q; want %s", p, r.skip, filepath.Join(root, "tool"))
	}
	Need(r, "absent", "make build")
	if want := "no absent in the repo's bin/ or on $PATH: make build builds it"; r.skip != want {
		t.Errorf("Need(absent) skipped with %q, want %q", r.skip, want)
	}
}

// skipRecorder records a skip instead of taking it, so that this test
// shows no skip of its own (make test counts them).
type skipRecorder struct {
	testing.TB
	skip string
}

func (r *skipRecorder) Helper() {}

func (r *skipRecorder) Skipf(format string, args ...any) { r.skip = fmt.Sprintf(format, args...) }
