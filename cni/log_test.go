package cni

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/contract"
)

// TestNewLogger: a log_file that cannot be opened falls back to stderr,
// announced by a warning as the first record there; a missing parent
// directory is created.
func TestNewLogger(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "plain-file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, file, level string
		wantFallback      string // part of the error the warning names; empty: the file is used
		wantInfo          bool   // the info record is written (to the file or stderr)
	}{
		{name: "stderr by default", level: "info", wantInfo: true},
		{name: "file in an existing directory", file: filepath.Join(dir, "cni.log"), level: "info", wantInfo: true},
		{name: "missing parent directories are created", file: filepath.Join(dir, "var", "log", "meshlet", "cni.log"), level: "info", wantInfo: true},
		{name: "parent is a file", file: filepath.Join(notDir, "cni.log"), level: "info", wantFallback: "not a directory", wantInfo: true},
		{name: "path is a directory", file: dir, level: "debug", wantFallback: "is a directory", wantInfo: true},
		{name: "warning written at log_level error", file: filepath.Join(notDir, "cni.log"), level: "error", wantFallback: "not a directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			log, closeLog := newLogger(&NetConf{ConflistEntry: contract.ConflistEntry{LogFile: tc.file, LogLevel: tc.level}}, &stderr, "pod_name", "web")
			log.Info("hello")
			closeLog()

			stderrRecords := records(t, stderr.String())
			if tc.wantFallback != "" {
				if len(stderrRecords) == 0 {
					t.Fatal("nothing on stderr, want the fallback warning")
				}
				w := stderrRecords[0]
				if w["level"] != "WARN" || !strings.Contains(w["msg"].(string), "log_file") || w["log_file"] != tc.file ||
					!strings.Contains(w["err"].(string), tc.wantFallback) || w["pod_name"] != "web" {
					t.Errorf("first stderr record %v, want a warning naming log_file, %s and %q", w, tc.file, tc.wantFallback)
				}
				stderrRecords = stderrRecords[1:]
			}
			logged := stderrRecords
			if tc.file != "" && tc.wantFallback == "" {
				if len(stderrRecords) != 0 {
					t.Errorf("stderr %q, want everything in the file", stderr.String())
				}
				b, err := os.ReadFile(tc.file)
				if err != nil {
					t.Fatal(err)
				}
				logged = records(t, string(b))
				// 0755 less the umask
				if st, err := os.Stat(filepath.Dir(tc.file)); err != nil || st.Mode().Perm()&^0o755 != 0 || st.Mode().Perm()&0o700 != 0o700 {
					t.Errorf("log directory: %v, want mode 0755", err)
				}
			}
			gotInfo := len(logged) == 1 && logged[0]["msg"] == "hello" && logged[0]["pod_name"] == "web"
			if gotInfo != tc.wantInfo || len(logged) > 1 {
				t.Errorf("records %v, want the info record: %v", logged, tc.wantInfo)
			}
		})
	}
}

func records(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if line == "" {
			continue
		}
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}
