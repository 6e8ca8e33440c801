// Package golden compares test output with files under testdata/ and, with
// `go test -update`, rewrites them after a deliberate change.
package golden

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pmezard/go-difflib/difflib"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// Check compares got with testdata/<name>, or writes it under -update.
func Check(t testing.TB, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -update writes it)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs (go test -update rewrites it):\n%s", path, unifiedDiff(path, string(want), string(got)))
	}
}

// unifiedDiff shows how to turn want (the golden file) into got, so the lines
// marked + are what -update would write. Three lines of context are what
// diff -u and git diff show, which keeps the output familiar.
func unifiedDiff(path, want, got string) string {
	d, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A:        lines(want),
		B:        lines(got),
		FromFile: path,
		ToFile:   "got",
		Context:  3,
	})
	if err != nil {
		// Writing to a strings.Builder cannot fail; say so rather than hide it.
		return "diff: " + err.Error()
	}
	return d
}

// lines splits s into lines that keep their "\n". difflib.SplitLines would
// add a "\n" to the last line, showing one line more than the file has and
// hiding a missing final newline; diff -u marks that one instead.
func lines(s string) []string {
	l := strings.SplitAfter(s, "\n")
	if last := len(l) - 1; l[last] == "" {
		l = l[:last]
	} else {
		l[last] += "\n\\ No newline at end of file\n"
	}
	return l
}
