package nodeimage

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path"
)

// fileSpec is one file of an image: bytes, or a host file's content.
type fileSpec struct {
	path string // in the image, relative to /
	mode int64
	data []byte
	src  string
}

// files adds the specs' paths, modes and contents to the key.
func (k *contentKey) files(fs []fileSpec) error {
	for _, f := range fs {
		k.str(f.path, fmt.Sprint(f.mode), string(f.data))
		if f.src != "" {
			if err := k.file(f.src); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeTar writes the files as a tar stream, each directory before its
// first file, everything owned by root.
func writeTar(w io.Writer, fs []fileSpec) error {
	tw := tar.NewWriter(w)
	dirs := map[string]bool{}
	for _, f := range fs {
		var parents []string
		for d := path.Dir(f.path); d != "." && !dirs[d]; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
			dirs[d] = true
		}
		for _, d := range parents {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
				return err
			}
		}
		if err := writeFile(tw, f); err != nil {
			return fmt.Errorf("%s: %w", f.path, err)
		}
	}
	return tw.Close()
}

func writeFile(tw *tar.Writer, f fileSpec) error {
	if f.src == "" {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.path, Mode: f.mode, Size: int64(len(f.data))}); err != nil {
			return err
		}
		_, err := tw.Write(f.data)
		return err
	}
	src, err := os.Open(f.src)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.path, Mode: f.mode, Size: st.Size()}); err != nil {
		return err
	}
	_, err = io.Copy(tw, src)
	return err
}
