package install

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	bridgeList = `{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}`
	bridgeConf = `{"cniVersion":"1.0.0","name":"a","type":"bridge"}`
)

func TestPrimaryConfig(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string // "" content: a directory
		want  string            // "": ErrNoPrimary
	}{
		{"empty dir", nil, ""},
		{"lowest name wins", map[string]string{"20-b.conflist": bridgeList, "10-a.conflist": bridgeList}, "10-a.conflist"},
		{"over extensions", map[string]string{"20-b.conflist": bridgeList, "10-a.conf": bridgeConf, "05.json": bridgeConf}, "05.json"},
		{"x.conf before x.conflist", map[string]string{"10.conflist": bridgeList, "10.conf": bridgeConf}, "10.conf"},
		{"other extensions ignored", map[string]string{"00.conflist.bak": bridgeList, "00.yaml": bridgeList, ".00.conflist.meshlet-tmp-1": bridgeList, "30.conflist": bridgeList}, "30.conflist"},
		{"directories ignored", map[string]string{"00.conflist": "", "30.conflist": bridgeList}, "30.conflist"},
		{"unparsable skipped", map[string]string{"00.conflist": `{"name":`, "30.conflist": bridgeList}, "30.conflist"},
		{"empty file skipped", map[string]string{"00.conflist": ``, "30.conflist": bridgeList}, "30.conflist"},
		{"conflist in a .conf skipped", map[string]string{"00.conf": bridgeList, "30.conflist": bridgeList}, "30.conflist"},
		{".conf without type skipped", map[string]string{"00.conf": `{"name":"a"}`, "30.conflist": bridgeList}, "30.conflist"},
		{"conflist without plugins skipped", map[string]string{"00.conflist": `{"name":"a","plugins":[]}`, "30.conflist": bridgeList}, "30.conflist"},
		{"nothing loads", map[string]string{"00.conflist": `{}`}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tc.files {
				p := filepath.Join(dir, name)
				var err error
				if content == "" && !strings.HasPrefix(tc.name, "empty file") {
					err = os.Mkdir(p, 0o755)
				} else {
					err = os.WriteFile(p, []byte(content), 0o644)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			got, err := PrimaryConfig(dir)
			if tc.want == "" {
				if !errors.Is(err, ErrNoPrimary) {
					t.Errorf("got %q, %v; want ErrNoPrimary", got, err)
				}
				return
			}
			if err != nil || got != filepath.Join(dir, tc.want) {
				t.Errorf("got %q, %v; want %s", got, err, tc.want)
			}
		})
	}
	if _, err := PrimaryConfig(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, ErrNoPrimary) {
		t.Errorf("missing dir: %v", err)
	}
}
