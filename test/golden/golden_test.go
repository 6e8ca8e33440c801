package golden

import (
	"os"
	"path/filepath"
	"testing"
)

type recorder struct {
	testing.TB
	errors int
}

func (r *recorder) Errorf(string, ...any) { r.errors++ }

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	wd, _ := os.Getwd()
	t.Cleanup(func() { _ = os.Chdir(wd) })
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("testdata", "x"), []byte("a\nb\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	same, diff := &recorder{TB: t}, &recorder{TB: t}
	Check(same, "x", []byte("a\nb\n"))
	Check(diff, "x", []byte("a\nc\n"))
	if same.errors != 0 || diff.errors != 1 {
		t.Errorf("equal file: %d errors, different file: %d errors; want 0 and 1", same.errors, diff.errors)
	}
	if got := firstLineDiff("a\nc\n", "a\nb\n"); got != `line 2: got "c", want "b"` {
		t.Errorf("firstLineDiff = %s", got)
	}
}
