package golden

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type recorder struct {
	testing.TB
	errors []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

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
	if len(same.errors) != 0 || len(diff.errors) != 1 {
		t.Fatalf("equal file: %d errors, different file: %d errors; want 0 and 1", len(same.errors), len(diff.errors))
	}
	want := "testdata/x differs (go test -update rewrites it):\n" +
		"--- testdata/x\n" +
		"+++ got\n" +
		"@@ -1,2 +1,2 @@\n" +
		" a\n" +
		"-b\n" +
		"+c\n"
	if diff.errors[0] != want {
		t.Errorf("Check reported\n%s\nwant\n%s", diff.errors[0], want)
	}
}

// TestUnifiedDiffHunks pins the parts a reader relies on: the golden file is
// the - side, unchanged lines around a change are shown as context, and
// changes far apart get separate @@ hunks with their own line numbers.
func TestUnifiedDiffHunks(t *testing.T) {
	var want, got []string
	for i := 1; i <= 12; i++ {
		want = append(want, fmt.Sprint(i))
		got = append(got, fmt.Sprint(i))
	}
	got[1], got[10] = "two", "eleven"
	got = append(got, "thirteen")
	d := unifiedDiff("testdata/n", strings.Join(want, "\n")+"\n", strings.Join(got, "\n")+"\n")
	expect := strings.Join([]string{
		"--- testdata/n",
		"+++ got",
		"@@ -1,5 +1,5 @@",
		" 1",
		"-2",
		"+two",
		" 3",
		" 4",
		" 5",
		"@@ -8,5 +8,6 @@",
		" 8",
		" 9",
		" 10",
		"-11",
		"+eleven",
		" 12",
		"+thirteen",
		"",
	}, "\n")
	if d != expect {
		t.Errorf("unifiedDiff =\n%s\nwant\n%s", d, expect)
	}
}

// TestUnifiedDiffFinalNewline: a file that differs only in its last newline
// must still show a change, marked the way diff -u marks it.
func TestUnifiedDiffFinalNewline(t *testing.T) {
	d := unifiedDiff("testdata/e", "a\nb\n", "a\nb")
	expect := "--- testdata/e\n" +
		"+++ got\n" +
		"@@ -1,2 +1,2 @@\n" +
		" a\n" +
		"-b\n" +
		"+b\n" +
		"\\ No newline at end of file\n"
	if d != expect {
		t.Errorf("unifiedDiff =\n%s\nwant\n%s", d, expect)
	}
	if d := unifiedDiff("testdata/e", "", "a\n"); d != "--- testdata/e\n+++ got\n@@ -0,0 +1 @@\n+a\n" {
		t.Errorf("diff from an empty file =\n%s", d)
	}
}
