// Package docs holds meshlet's documentation; its one test keeps what the
// documentation and the code's comments cite in step with the tree.
package docs

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestCitationsExist: every test, benchmark or fuzz target, repository
// path and make target named in README.md, docs/*.md or a Go comment
// exists, so that a rename breaks this test instead of a reader.
func TestCitationsExist(t *testing.T) {
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	tree, err := readTree(repo)
	if err != nil {
		t.Fatal(err)
	}
	if len(tree.tests) < 100 || len(tree.targets) < 5 || len(tree.sources) < 20 {
		t.Fatalf("found %d tests, %d make targets, %d sources under %s: the walk is broken",
			len(tree.tests), len(tree.targets), len(tree.sources), repo)
	}
	var problems []string
	for _, src := range tree.sources {
		for _, c := range citations(src) {
			if msg := tree.check(src, c); msg != "" {
				problems = append(problems, fmt.Sprintf("%s:%d: %s", src.rel, c.line, msg))
			}
		}
	}
	slices.Sort(problems)
	for _, p := range problems {
		t.Error(p)
	}
}

// A source is a file whose citations are checked: a Markdown document, or
// a Go file's comments.
type source struct {
	rel   string // from the repository's root
	lines []text
}

// A text is one line of prose: a Markdown line, or a comment's.
type text struct {
	n    int
	s    string
	code bool // in a fenced code block
}

type citation struct {
	kind, name string
	line       int
	text       string // the line it is on
}

type tree struct {
	root    string
	tests   map[string]bool // Test*, Benchmark*, Fuzz*, Example* functions
	targets map[string]bool // the Makefile's
	files   []string        // every file read, from the root
	sources []source
}

// Directories never read: generated, fetched or another module's.
var skipDirs = map[string]bool{".git": true, "bin": true, ".cluster": true, ".kind": true, "testdata": true, "node_modules": true}

func readTree(root string) (*tree, error) {
	tr := &tree{root: root, tests: map[string]bool{}, targets: map[string]bool{}}
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		return nil, err
	}
	for _, m := range regexp.MustCompile(`(?m)^([a-z][a-z0-9-]*):`).FindAllStringSubmatch(string(mk), -1) {
		tr.targets[m[1]] = true
	}
	testFunc := regexp.MustCompile(`^func ((?:Test|Benchmark|Fuzz|Example)\w*)\(`)
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if skipDirs[d.Name()] && path != root {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		tr.files = append(tr.files, rel)
		switch {
		case strings.HasSuffix(path, ".go"):
			src, funcs, err := readGo(path, rel, testFunc)
			if err != nil {
				return err
			}
			for _, f := range funcs {
				tr.tests[f] = true
			}
			tr.sources = append(tr.sources, src)
		case strings.HasSuffix(path, ".md") && (rel == "README.md" || filepath.Dir(rel) == "docs"):
			src, err := readMarkdown(path, rel)
			if err != nil {
				return err
			}
			tr.sources = append(tr.sources, src)
		}
		return nil
	})
	return tr, err
}

// readGo returns the file's comment lines and the test functions it
// declares. Comments are found by line: "//" outside a string literal at
// the start of a line or after code; a file of this repository keeps no
// "//" inside a string before a comment on the same line that cites
// anything.
func readGo(path, rel string, testFunc *regexp.Regexp) (source, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return source{}, nil, err
	}
	defer f.Close()
	src := source{rel: rel}
	var funcs []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := testFunc.FindStringSubmatch(line); m != nil && strings.HasSuffix(rel, "_test.go") {
			funcs = append(funcs, m[1])
		}
		trimmed := strings.TrimSpace(line)
		if c, ok := strings.CutPrefix(trimmed, "//"); ok {
			if !strings.HasPrefix(c, "go:") {
				src.lines = append(src.lines, text{n: n, s: c})
			}
			continue
		}
		if i := strings.Index(line, " // "); i >= 0 && strings.Count(line[:i], `"`)%2 == 0 && strings.Count(line[:i], "`")%2 == 0 {
			src.lines = append(src.lines, text{n: n, s: line[i+4:]})
		}
	}
	return src, funcs, sc.Err()
}

func readMarkdown(path, rel string) (source, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return source{}, err
	}
	src := source{rel: rel}
	fenced := false
	for i, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		src.lines = append(src.lines, text{n: i + 1, s: line, code: fenced})
	}
	return src, nil
}

var (
	testName   = regexp.MustCompile(`\b((?:Test|Benchmark|Fuzz)[A-Z]\w*)(\*?)`)
	backticked = regexp.MustCompile("`([^`]+)`")
	mdLink     = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	makeCmd    = regexp.MustCompile(`(?:^|[\s;(&|])make ([a-z][a-z0-9-]*)\b`)
	// A word that reads as a path in this repository: a top-level entry
	// followed by more, or a file with an extension this tree holds.
	pathWord = regexp.MustCompile(`(?:^|[\s(\[,'"])((?:\.\./)*[A-Za-z0-9_.-]+/[A-Za-z0-9_./*-]*[A-Za-z0-9_*])`)
)

var (
	fileExt     = regexp.MustCompile(`\.(go|md|sh|yaml|yml|json|conflist|tpl|txt)$`)
	kubectlLine = regexp.MustCompile(`kubectl|\bexec\b|\bcurl\b`)
	// A developer's or CI's own directories: what lies there is not the
	// repository's, and another machine has something else there.
	machinePath = regexp.MustCompile(`(?:^|[\s(\[,'"])((?:/work|/home|/root)/[A-Za-z0-9_./-]+)`)
)

func citations(src source) []citation {
	var out []citation
	md := strings.HasSuffix(src.rel, ".md")
	for _, l := range src.lines {
		for _, m := range testName.FindAllStringSubmatch(l.s, -1) {
			kind := "test"
			if m[2] == "*" {
				kind = "test prefix"
			}
			out = append(out, citation{kind, m[1], l.n, l.s})
		}
		// make targets: in code (a fence or backticks), never in prose,
		// where "make it" is English.
		var code []string
		if l.code {
			code = append(code, l.s)
		}
		for _, m := range backticked.FindAllStringSubmatch(l.s, -1) {
			code = append(code, m[1])
		}
		for _, c := range code {
			for _, m := range makeCmd.FindAllStringSubmatch(" "+c, -1) {
				out = append(out, citation{"make target", m[1], l.n, l.s})
			}
		}
		if md {
			for _, m := range mdLink.FindAllStringSubmatch(l.s, -1) {
				if target := m[1]; !strings.Contains(target, "://") && !strings.HasPrefix(target, "#") && !strings.HasPrefix(target, "mailto:") {
					target, _, _ = strings.Cut(target, "#")
					out = append(out, citation{"link", target, l.n, l.s})
				}
			}
			for _, m := range backticked.FindAllStringSubmatch(l.s, -1) {
				for _, w := range pathWord.FindAllStringSubmatch(" "+m[1], -1) {
					out = append(out, citation{"path", w[1], l.n, l.s})
				}
			}
			continue
		}
		for _, w := range pathWord.FindAllStringSubmatch(l.s, -1) {
			out = append(out, citation{"path", w[1], l.n, l.s})
		}
	}
	for _, l := range src.lines {
		for _, m := range machinePath.FindAllStringSubmatch(l.s, -1) {
			out = append(out, citation{"machine path", m[1], l.n, l.s})
		}
	}
	return out
}

// check says what is wrong with c, cited in src; "" if nothing.
func (tr *tree) check(src source, c citation) string {
	switch c.kind {
	case "test":
		if !tr.tests[c.name] {
			return fmt.Sprintf("cites %s: no such test, benchmark or fuzz target in the repository", c.name)
		}
	case "test prefix":
		for name := range tr.tests {
			if strings.HasPrefix(name, c.name) {
				return ""
			}
		}
		return fmt.Sprintf("cites %s*: no test, benchmark or fuzz target starts so", c.name)
	case "make target":
		if !tr.targets[c.name] {
			return fmt.Sprintf("cites `make %s`: the Makefile has no target %s", c.name, c.name)
		}
	case "link":
		p := filepath.Join(tr.root, filepath.Dir(src.rel), c.name)
		if !tr.inside(p) {
			return fmt.Sprintf("links %s, outside the repository", c.name)
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Sprintf("links %s: no such file or directory", c.name)
		}
	case "path":
		return tr.checkPath(src, c.text, c.name)
	case "machine path":
		return fmt.Sprintf("cites %s, a path of one machine, not of the repository", c.name)
	}
	return ""
}

// checkPath checks a word that may be a path. Only words that can only be
// this repository's paths are checked: a top-level entry of the tree
// followed by more, a "../" path, or a file with an extension the tree
// holds whose first element names no host (no dot in it) and is no
// absolute path. It must exist from the repository's root or from the
// citing file's directory (a glob: match something).
func (tr *tree) checkPath(src source, line, word string) string {
	word = strings.TrimRight(word, ".,:;")
	first, rest, _ := strings.Cut(word, "/")
	if first == "deploy" && !strings.Contains(rest, "/") && !fileExt.MatchString(rest) && kubectlLine.MatchString(line) {
		return "" // kubectl's TYPE/NAME, as in kubectl exec deploy/web
	}
	_, err := os.Stat(filepath.Join(tr.root, first))
	topLevel := err == nil && !skipDirs[first] && first != "." && first != ".."
	relative := first == ".."
	file := fileExt.MatchString(word) && !strings.Contains(first, ".") && first != ""
	if !topLevel && !relative && !file {
		return ""
	}
	for _, base := range []string{tr.root, filepath.Join(tr.root, filepath.Dir(src.rel))} {
		p := filepath.Join(base, word)
		if relative && !tr.inside(p) {
			return fmt.Sprintf("cites %s, outside the repository", word)
		}
		if m, _ := filepath.Glob(p); len(m) > 0 {
			return ""
		}
	}
	if !topLevel && !relative {
		// A file named from somewhere this test cannot know (a chart's
		// templates/, a peer's tree): only a top-level or relative path
		// is surely the repository's.
		return ""
	}
	return fmt.Sprintf("cites %s: no such path in the repository", word)
}

func (tr *tree) inside(p string) bool {
	rel, err := filepath.Rel(tr.root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
