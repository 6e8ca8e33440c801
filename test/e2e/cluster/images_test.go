package cluster

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// checkTmp says whether hdr is a /tmp as real images have it: a directory
// anyone may write into, sticky so that only a file's owner removes it.
// The mode is read as the unpacker reads it, through the header's
// FileInfo, where c_ISVTX becomes fs.ModeSticky.
func checkTmp(hdr *tar.Header) error {
	if hdr.Typeflag != tar.TypeDir {
		return fmt.Errorf("/tmp is of type %q, want a directory", hdr.Typeflag)
	}
	if got, want := hdr.FileInfo().Mode(), fs.ModeDir|fs.ModeSticky|0o777; got != want {
		return fmt.Errorf("/tmp has mode %v (%o in the header), want %v", got, hdr.Mode, want)
	}
	return nil
}

// TestImageTmpLikeRealImages builds an image the way the local cluster
// does (buildImage, no binary of the cluster's needed) and checks its
// layer's /tmp has busybox's, alpine's and distroless' mode, 1777, so a
// non-root container can create files there as it can in those images.
func TestImageTmpLikeRealImages(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	if err := os.WriteFile(src, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := buildImage(imageSpec{ref: "localhost/meshlet/tmp-test:dev",
		files: []imageFile{{path: "bin/app", src: src}, {path: "bin/sh", link: "/bin/app"}}, entrypoint: []string{"/bin/app"}})
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v), want one", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var tmp []*tar.Header
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Clean(hdr.Name) == "tmp" {
			tmp = append(tmp, hdr)
		}
	}
	if len(tmp) != 1 {
		t.Fatalf("%d /tmp entries in the layer, want one", len(tmp))
	}
	if err := checkTmp(tmp[0]); err != nil {
		t.Error(err)
	}

	// The /tmp the images had before, owner-writable only, and one with
	// the permissions but not the sticky bit, must both be refused.
	for _, mode := range []int64{0o755, 0o777} {
		if err := checkTmp(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: mode}); err == nil {
			t.Errorf("checkTmp accepts a /tmp of mode %o", mode)
		}
	}
}
