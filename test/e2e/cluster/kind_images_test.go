package cluster

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// stage is what one stage of a multi-stage Dockerfile puts in its image.
type stage struct {
	base       string
	files      map[string]string // path in the image → built binary's name
	entrypoint []string
	cmd        []string
}

// readStages reads the named stages of a Dockerfile ("FROM <base> AS
// <name>"). In them only COPY --from=build, ENTRYPOINT and CMD are
// expected, so that a new instruction cannot go unnoticed.
func readStages(t *testing.T, path string) map[string]*stage {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	stages := map[string]*stage{}
	var cur *stage
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch {
		case f[0] == "FROM":
			cur = nil
			if len(f) == 4 && strings.EqualFold(f[2], "AS") && f[3] != "build" {
				cur = &stage{base: f[1], files: map[string]string{}}
				stages[f[3]] = cur
			}
		case cur == nil: // the build stage
		case f[0] == "COPY" && len(f) == 4 && f[1] == "--from=build":
			cur.files[strings.TrimPrefix(f[3], "/")] = filepath.Base(f[2])
		case f[0] == "ENTRYPOINT" || f[0] == "CMD":
			dst := &cur.entrypoint
			if f[0] == "CMD" {
				dst = &cur.cmd
			}
			if err := json.Unmarshal([]byte(strings.TrimSpace(strings.TrimPrefix(line, f[0]))), dst); err != nil {
				t.Fatalf("%s: %q: %v", path, line, err)
			}
		default:
			t.Fatalf("%s: %q: expected only COPY --from=build, ENTRYPOINT and CMD in an image's stage", path, line)
		}
	}
	return stages
}

// TestKindImagesMatchLocal: the test images test/e2e/kind/Dockerfile builds
// for kind hold what the local cluster's do (imageSpecs): the same
// binaries at the same paths, the same entrypoint and command, and
// busybox (the busybox image as the base) exactly where the local image
// has Debian's. So the suite's pods run alike on both.
func TestKindImagesMatchLocal(t *testing.T) {
	root, specs := localImageSpecs(t)
	stages := readStages(t, filepath.Join(root, "test", "e2e", "kind", "Dockerfile"))
	for target, ref := range map[string]string{"static-server": StaticServerImage, "static-client": StaticClientImage, "pause": PauseImage} {
		got := stages[target]
		if got == nil {
			t.Errorf("Dockerfile: no stage %s (for %s)", target, ref)
			continue
		}
		for _, s := range specs {
			if s.ref != ref {
				continue
			}
			// The base is compared apart: busybox:<tag> where the local
			// image has Debian's busybox, scratch where it has none.
			want := stage{base: got.base, files: map[string]string{}, entrypoint: s.entrypoint, cmd: s.cmd}
			hasBusybox := false
			for _, f := range s.files {
				if f.src == busyboxPath || f.link == "/bin/busybox" {
					hasBusybox = true
					continue
				}
				want.files[f.path] = filepath.Base(f.src)
			}
			if wantBase := map[bool]string{true: "busybox:", false: "scratch"}[hasBusybox]; !strings.HasPrefix(got.base, wantBase) {
				t.Errorf("stage %s on %s: want %s (the local %s has busybox: %v)", target, got.base, wantBase, ref, hasBusybox)
			}
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("stage %s = %+v\nthe local %s = %+v", target, *got, ref, want)
			}
		}
	}
}
