package cluster

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// dockerImage is what the final stage of a Dockerfile puts in its image:
// files copied from the build stage (path in the image → binary name),
// the entrypoint and the user.
type dockerImage struct {
	files      map[string]string
	entrypoint []string
	user       string
}

// readDockerfile reads the last stage of a Dockerfile. An instruction
// there other than COPY from the build stage, ENTRYPOINT and USER is an
// error, so that a new one cannot go unnoticed.
func readDockerfile(t *testing.T, path string) dockerImage {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var last []string
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "FROM "):
			last = nil // a new stage
		case line != "" && !strings.HasPrefix(line, "#"):
			last = append(last, line)
		}
	}
	img := dockerImage{files: map[string]string{}}
	for _, line := range last {
		fields := strings.Fields(line)
		switch fields[0] {
		case "COPY":
			if len(fields) != 4 || fields[1] != "--from=build" {
				t.Fatalf("%s: final stage: %q, expected COPY --from=build <built binary> <path>", path, line)
			}
			img.files[strings.TrimPrefix(fields[3], "/")] = filepath.Base(fields[2])
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "ENTRYPOINT ")), &img.entrypoint); err != nil {
				t.Fatalf("%s: %q: %v", path, line, err)
			}
		case "USER":
			img.user = fields[1]
		default:
			t.Fatalf("%s: final stage: unexpected %q", path, line)
		}
	}
	return img
}

// localImageSpecs are the images the local cluster builds, and the
// repository's root, for comparing them with Dockerfiles.
func localImageSpecs(t *testing.T) (string, []imageSpec) {
	t.Helper()
	if _, err := os.Stat(busyboxPath); err != nil {
		t.Skipf("the image specs need %s (Debian's busybox-static; make tools installs it)", busyboxPath)
	}
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	specs, err := New(root).imageSpecs()
	if err != nil {
		t.Fatal(err)
	}
	return root, specs
}

// TestImageMatchesDockerfile: the meshlet image the local cluster builds
// without Docker has the layout, entrypoint and user of the one users
// build from deploy/image/Dockerfile, so the chart runs the same way on
// both.
func TestImageMatchesDockerfile(t *testing.T) {
	root, specs := localImageSpecs(t)
	want := readDockerfile(t, filepath.Join(root, "deploy", "image", "Dockerfile"))
	for _, s := range specs {
		if s.ref != MeshletImage {
			continue
		}
		got := dockerImage{files: map[string]string{}, entrypoint: s.entrypoint, user: s.user}
		for _, f := range s.files {
			got.files[f.path] = filepath.Base(f.src)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("local %s = %+v\nDockerfile's = %+v", MeshletImage, got, want)
		}
		return
	}
	t.Fatalf("no %s among the local images", MeshletImage)
}
