package webhook

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/contract"
)

// The annotation reference, docs/annotations.md, is held to the code by
// the tests below. Its tables are read by their header:
//
//   - a table with a column "a bad value is denied with" documents
//     annotations the webhook reads: the first cell names the annotation,
//     the column "example" holds a value it admits, and the last one
//     either pairs `bad value` → `message` (several joined by <br>) or
//     says "never denied";
//   - a table whose first header is "not implemented" lists annotations
//     that are admitted with the warning the page quotes;
//   - a table with a column "written by" lists what meshlet writes.
//
// A value that starts with consul.hashicorp.com/ or meshlet.io/ is a whole
// "key: value", for annotations whose name is a template
// (service-meta-<key>).
const annotationsDocPath = "../docs/annotations.md"

const (
	colDenied      = "a bad value is denied with"
	colExample     = "example"
	colWrittenBy   = "written by"
	hdrNotImpl     = "not implemented"
	neverDenied    = "never denied"
	meshletPrefix  = "meshlet.io/"
	warningPattern = "annotation <name> "
)

var (
	codeSpanRE = regexp.MustCompile("`([^`]*)`")
	// denialRE is one `bad value` → `message` pair.
	denialRE = regexp.MustCompile("`([^`]+)` → `([^`]+)`")
)

// docTable is one markdown table of the page.
type docTable struct {
	header []string
	rows   []docRow
}

type docRow struct {
	line  int // 1-based, for messages
	cells []string
}

// col is the index of the header cell named name, or -1.
func (t docTable) col(name string) int {
	return slices.Index(t.header, name)
}

func readAnnotationsDoc(t *testing.T) (string, []docTable) {
	t.Helper()
	b, err := os.ReadFile(annotationsDocPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	var tables []docTable
	inTable := false
	for i, line := range strings.Split(doc, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		cells := splitRow(line)
		switch {
		case !inTable:
			tables = append(tables, docTable{header: cells})
			inTable = true
		case isSeparator(cells):
		default:
			tables[len(tables)-1].rows = append(tables[len(tables)-1].rows, docRow{line: i + 1, cells: cells})
		}
	}
	return doc, tables
}

// splitRow splits a table row on the pipes outside code spans (and not
// escaped as \|), trimming each cell.
func splitRow(line string) []string {
	line = strings.TrimSuffix(strings.TrimPrefix(line, "|"), "|")
	var cells []string
	var cur strings.Builder
	inCode := false
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == '`':
			inCode = !inCode
			cur.WriteByte(c)
		case c == '\\' && i+1 < len(line) && line[i+1] == '|':
			cur.WriteByte('|')
			i++
		case c == '|' && !inCode:
			cells = append(cells, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(cells, strings.TrimSpace(cur.String()))
}

func isSeparator(cells []string) bool {
	for _, c := range cells {
		if strings.Trim(c, ":-") != "" || c == "" {
			return false
		}
	}
	return true
}

// spans are the contents of a cell's code spans.
func spans(cell string) []string {
	var out []string
	for _, m := range codeSpanRE.FindAllStringSubmatch(cell, -1) {
		out = append(out, m[1])
	}
	return out
}

// annotationNames are the code spans of a cell that name an annotation.
func annotationNames(cell string) []string {
	var out []string
	for _, s := range spans(cell) {
		if strings.HasPrefix(s, contract.Prefix) || strings.HasPrefix(s, meshletPrefix) {
			out = append(out, s)
		}
	}
	return out
}

// docAnnotation is one row of a table of annotations the webhook reads.
type docAnnotation struct {
	name    string // may be a template: consul.hashicorp.com/service-meta-<key>
	example string
	denials [][2]string // bad value, message
	line    int
}

// readRows are the rows of the tables of annotations the webhook reads.
func readRows(t *testing.T, tables []docTable) []docAnnotation {
	t.Helper()
	var out []docAnnotation
	for _, tb := range tables {
		den, ex := tb.col(colDenied), tb.col(colExample)
		if den < 0 {
			continue
		}
		if ex < 0 || tb.col("annotation") != 0 {
			t.Errorf("a table with the column %q needs the columns \"annotation\" (first) and %q: header %q", colDenied, colExample, tb.header)
			continue
		}
		for _, r := range tb.rows {
			if len(r.cells) != len(tb.header) {
				t.Errorf("line %d: %d cells, the header has %d", r.line, len(r.cells), len(tb.header))
				continue
			}
			names := annotationNames(r.cells[0])
			if len(names) != 1 {
				t.Errorf("line %d: the first cell must name one annotation in backticks, found %q", r.line, names)
				continue
			}
			a := docAnnotation{name: names[0], line: r.line}
			if e := spans(r.cells[ex]); len(e) == 1 {
				a.example = e[0]
			} else {
				t.Errorf("line %d (%s): the example cell must hold one value in backticks, found %q", r.line, a.name, e)
			}
			cell := r.cells[den]
			for _, m := range denialRE.FindAllStringSubmatch(cell, -1) {
				a.denials = append(a.denials, [2]string{m[1], m[2]})
			}
			rest := strings.TrimSpace(strings.ReplaceAll(denialRE.ReplaceAllString(cell, ""), "<br>", ""))
			switch {
			case len(a.denials) == 0 && !strings.HasPrefix(cell, neverDenied):
				t.Errorf("line %d (%s): the last cell must pair `bad value` → `message`, or say %q: %q", r.line, a.name, neverDenied, cell)
			case len(a.denials) > 0 && rest != "":
				t.Errorf("line %d (%s): the last cell holds more than `bad value` → `message` pairs joined by <br>: %q left", r.line, a.name, rest)
			}
			out = append(out, a)
		}
	}
	return out
}

// keyValue resolves a documented value of the annotation row name to the
// annotation it sets and its value.
func keyValue(name, v string) (key, value string, ok bool) {
	if strings.HasPrefix(v, contract.Prefix) || strings.HasPrefix(v, meshletPrefix) {
		key, value, ok = strings.Cut(v, ": ")
		template, _, _ := strings.Cut(name, "<")
		return key, value, ok && (key == name || strings.Contains(name, "<") && strings.HasPrefix(key, template))
	}
	return name, v, !strings.Contains(name, "<")
}

// docConsulDNSIP stands for the Consul DNS Service's ClusterIP: with the
// chart's default flags the webhook looks that Service up, and the page's
// answers are those of a cluster where it exists.
const docConsulDNSIP = "10.96.0.53"

func withConsulDNS(c Config) Config {
	c.ConsulDNS.IP = docConsulDNSIP
	return c
}

// mutateWith runs the webhook, with its default configuration, on a pod
// that opts in and carries key: value.
func mutateWith(key, value string) Result {
	ann := on(key, value)
	if key == contract.Inject {
		ann = map[string]string{key: value}
	}
	return Mutate(app(ann), "shop", withConsulDNS(DefaultConfig()))
}

// TestAnnotationsDoc: every documented bad value is denied with the
// documented message, and every documented example is admitted.
func TestAnnotationsDoc(t *testing.T) {
	_, tables := readAnnotationsDoc(t)
	rows := readRows(t, tables)
	n := 0
	for _, a := range rows {
		if key, value, ok := keyValue(a.name, a.example); !ok {
			t.Errorf("line %d: example %q is not a value of %s (write a template's as `key: value`)", a.line, a.example, a.name)
		} else if res := mutateWith(key, value); res.Denied != nil || res.Patch == nil {
			t.Errorf("line %d: the example %s: %q is not injected: denied %v, skipped %q", a.line, key, value, res.Denied, res.Skipped)
		}
		for _, d := range a.denials {
			key, value, ok := keyValue(a.name, d[0])
			if !ok {
				t.Errorf("line %d: bad value %q is not a value of %s (write a template's as `key: value`)", a.line, d[0], a.name)
				continue
			}
			n++
			res := mutateWith(key, value)
			switch {
			case res.Denied == nil:
				t.Errorf("line %d: %s: %q is documented as denied, but the webhook admits it (skipped %q, %d patch operations)", a.line, key, value, res.Skipped, len(res.Patch))
			case res.Patch != nil:
				t.Errorf("line %d: %s: %q: denied with a patch", a.line, key, value)
			case !strings.Contains(res.Denied.Error(), d[1]):
				t.Errorf("line %d: %s: %q is denied with\n\t%s\nbut the page says\n\t%s", a.line, key, value, res.Denied, d[1])
			}
		}
	}
	if len(rows) == 0 || n == 0 {
		t.Errorf("%d annotations and %d denials found: are the tables headed %q still there?", len(rows), n, colDenied)
	}
}

// TestAnnotationsDocNotImplemented: every annotation the page lists as not
// implemented is unknown to the webhook and admitted with the quoted
// warning.
func TestAnnotationsDocNotImplemented(t *testing.T) {
	doc, tables := readAnnotationsDoc(t)
	m := regexp.MustCompile("`(" + regexp.QuoteMeta(warningPattern) + "[^`]*)`").FindStringSubmatch(doc)
	if m == nil {
		t.Fatalf("the page quotes no warning `%s…`", warningPattern)
	}
	n := 0
	for _, tb := range tables {
		if len(tb.header) == 0 || tb.header[0] != hdrNotImpl {
			continue
		}
		for _, r := range tb.rows {
			names := annotationNames(r.cells[0])
			if len(names) == 0 {
				t.Errorf("line %d: no annotation in the first cell", r.line)
			}
			for _, name := range names {
				n++
				if known[name] || strings.HasPrefix(name, contract.ServiceMetaPrefix) {
					t.Errorf("line %d: %s is implemented: document it with the annotations the webhook reads", r.line, name)
					continue
				}
				res := mutateWith(name, "x")
				want := strings.Replace(m[1], "<name>", name, 1)
				if res.Denied != nil || res.Patch == nil || !slices.Contains(res.Warnings, want) {
					t.Errorf("line %d: %s: denied %v, %d patch operations, warnings %q; want the pod injected with the warning %q",
						r.line, name, res.Denied, len(res.Patch), res.Warnings, want)
				}
			}
		}
	}
	if n == 0 {
		t.Errorf("no table headed %q", hdrNotImpl)
	}
}

// TestAnnotationsDocCoversEveryAnnotation: every annotation name the code
// defines (the annotations package's exported constants, and the webhook's
// known list) has its row, so that a new annotation cannot go
// undocumented; and every documented one exists.
func TestAnnotationsDocCoversEveryAnnotation(t *testing.T) {
	_, tables := readAnnotationsDoc(t)
	written := map[string]bool{contract.InjectStatus: true, contract.TProxyStatus: true,
		contract.RedirectConfig: true, contract.RegistrationKey: true}

	inCode := map[string]bool{}
	for name := range known {
		inCode[name] = true
	}
	for _, name := range annotationConstants(t) {
		inCode[name] = true
	}
	if !inCode[contract.Inject] || !inCode[contract.RegistrationKey] || !inCode[contract.ServiceMetaPrefix] {
		t.Fatalf("the annotations package's constants were not all found: %v", inCode)
	}

	documented := map[string]int{} // name → line
	for _, a := range readRows(t, tables) {
		documented[a.name] = a.line
		template, _, isTemplate := strings.Cut(a.name, "<")
		switch {
		case written[a.name]:
			t.Errorf("line %d: %s is written by meshlet: document it in the table with the column %q", a.line, a.name, colWrittenBy)
		case isTemplate && !inCode[template], !isTemplate && !inCode[a.name]:
			t.Errorf("line %d: %s is documented, but the code defines no such annotation", a.line, a.name)
		}
	}
	for _, tb := range tables {
		if tb.col(colWrittenBy) < 0 {
			continue
		}
		for _, r := range tb.rows {
			for _, name := range annotationNames(r.cells[0]) {
				if !written[name] {
					t.Errorf("line %d: %s is documented as written by meshlet, but the webhook does not write it", r.line, name)
				}
				documented[name] = r.line
			}
		}
	}

	for name := range inCode {
		if _, ok := documented[name]; ok {
			continue
		}
		template := false
		for d := range documented {
			if strings.HasSuffix(name, "-") && strings.HasPrefix(d, name+"<") {
				template = true
			}
		}
		if !template {
			t.Errorf("%s has no row in %s", name, filepath.Base(annotationsDocPath))
		}
	}
}

// annotationConstants are the annotation names among the contract
// package's exported string constants (consul.hashicorp.com/… and
// meshlet.io/…, but not the bare prefix), evaluated from its source.
func annotationConstants(t *testing.T) []string {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("../contract/*.go")
	if err != nil {
		t.Fatal(err)
	}
	exprs := map[string]ast.Expr{}
	var exported []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range file.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, id := range vs.Names {
					if i < len(vs.Values) {
						exprs[id.Name] = vs.Values[i]
						if id.IsExported() {
							exported = append(exported, id.Name)
						}
					}
				}
			}
		}
	}
	var eval func(ast.Expr, int) (string, bool)
	eval = func(e ast.Expr, depth int) (string, bool) {
		if depth > 20 {
			return "", false
		}
		switch x := e.(type) {
		case *ast.BasicLit:
			if x.Kind != token.STRING {
				return "", false
			}
			s, err := strconv.Unquote(x.Value)
			return s, err == nil
		case *ast.Ident:
			if d, ok := exprs[x.Name]; ok {
				return eval(d, depth+1)
			}
		case *ast.ParenExpr:
			return eval(x.X, depth+1)
		case *ast.BinaryExpr:
			if x.Op == token.ADD {
				a, ok1 := eval(x.X, depth+1)
				b, ok2 := eval(x.Y, depth+1)
				return a + b, ok1 && ok2
			}
		}
		return "", false
	}
	var names []string
	for _, c := range exported {
		v, ok := eval(exprs[c], 0)
		if ok && v != contract.Prefix && (strings.HasPrefix(v, contract.Prefix) || strings.HasPrefix(v, meshletPrefix)) {
			names = append(names, v)
		}
	}
	return names
}

// The columns naming a data plane say what the row's example does on it,
// as the webhook answers: works (injected, no warning about it), warned
// (injected with a warning naming the annotation) or denied.
var dataPlaneColumns = []string{DataPlaneEnvoy, DataPlaneConsul, DataPlaneMeshlet}

// dataPlaneConfigs are the webhook's configurations per data plane, as
// the chart renders them (consul: no transparent proxy; every data plane
// given meshlet's image).
func dataPlaneConfigs() []Config {
	return []Config{withConsulDNS(envoyCfg()), withConsulDNS(consulCfg()), withConsulDNS(meshletCfg())}
}

// mergingAnnotations act only with metrics merging on: their rows' examples
// are tried with enable-metrics and enable-metrics-merging on, so that a
// data plane cell says what the annotation does where it has something to
// do.
var mergingAnnotations = []string{contract.EnableMetricsMerging, contract.MergedMetricsPort,
	contract.ServiceMetricsPort, contract.ServiceMetricsPath}

// outcome is what the webhook does with key: value on a pod under cfg.
func outcome(key, value string, cfg Config) string {
	ann := on(key, value)
	if key == contract.Inject {
		ann = map[string]string{key: value}
	}
	if slices.Contains(mergingAnnotations, key) {
		ann[contract.EnableMetrics] = "true"
		if key != contract.EnableMetricsMerging {
			ann[contract.EnableMetricsMerging] = "true"
		}
	}
	res := Mutate(app(ann), "shop", cfg)
	switch {
	case res.Denied != nil:
		return "denied"
	case slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, key) }):
		return "warned"
	}
	return "works"
}

// TestAnnotationsDocDataPlanes: each row's data plane columns say what
// the webhook does with its example on that data plane.
func TestAnnotationsDocDataPlanes(t *testing.T) {
	_, tables := readAnnotationsDoc(t)
	n := 0
	for _, tb := range tables {
		if tb.col(colDenied) < 0 {
			continue
		}
		ex := tb.col(colExample)
		for i, dp := range dataPlaneColumns {
			c := tb.col(dp)
			if c < 0 {
				t.Errorf("the table headed %q has no column %q", tb.header, dp)
				continue
			}
			for _, r := range tb.rows {
				names, examples := annotationNames(r.cells[0]), spans(r.cells[ex])
				if len(names) != 1 || len(examples) != 1 || len(r.cells) != len(tb.header) {
					continue // readRows reports these
				}
				key, value, ok := keyValue(names[0], examples[0])
				if !ok {
					continue
				}
				n++
				want := strings.Trim(strings.TrimSpace(r.cells[c]), "`")
				if got := outcome(key, value, dataPlaneConfigs()[i]); got != want {
					t.Errorf("line %d (%s): data plane %s: the page says %q, the webhook: %s", r.line, names[0], dp, want, got)
				}
			}
		}
	}
	if n == 0 {
		t.Error("no data plane cell checked")
	}
}
