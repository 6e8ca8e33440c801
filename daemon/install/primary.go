package install

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

// confExts are the extensions the runtimes read in the conf dir.
var confExts = []string{".conf", ".conflist", ".json"}

// ErrNoPrimary: the conf dir holds no config that loads (yet: the primary
// CNI usually writes it after the node agent starts).
var ErrNoPrimary = errors.New("no CNI network config")

// PrimaryConfig returns the config the runtime uses for pods: the files of
// confDir ending .conf, .conflist or .json (libcni.ConfFiles, as
// containerd's go-cni loadFromConfDir lists them), sorted by name, the
// first one that loads as go-cni loads it (a .conflist with
// libcni.ConfListFromFile, any other with libcni.ConfFromFile and a
// non-empty type; a conflist in a .conf file does not load).
//
// A file that does not load is skipped, as CRI-O's ocicni does. containerd
// (go-cni 1.1) does not skip it: the whole load fails and the node has no
// pod network until the file is fixed, whatever is chained where. Skipping
// makes the CRI-O choice and, on containerd, chains the network that will
// be used once the broken file is gone. A file the primary CNI is halfway
// through writing also fails to load; Watch reruns on its next write.
//
// meshlet writes no temporary or backup file in confDir (it rewrites the
// primary in place), so there is none of its own to skip.
func PrimaryConfig(confDir string) (path string, err error) {
	files, err := libcni.ConfFiles(confDir, confExts)
	if err != nil {
		return "", fmt.Errorf("list CNI configs in %s: %w", confDir, err)
	}
	sort.Strings(files)
	var skipped []string
	for _, f := range files {
		if err := loads(f); err != nil {
			skipped = append(skipped, fmt.Sprintf("%s (%v)", filepath.Base(f), err))
			continue
		}
		return f, nil
	}
	if len(skipped) > 0 {
		return "", fmt.Errorf("%w in %s: none of the files loads: %s", ErrNoPrimary, confDir, strings.Join(skipped, "; "))
	}
	return "", fmt.Errorf("%w in %s", ErrNoPrimary, confDir)
}

func loads(path string) error {
	if isConflist(path) {
		_, err := libcni.ConfListFromFile(path)
		return err
	}
	// go-cni's libcni.ConfFromFile (deprecated) is this, which also
	// requires a type.
	raw, err := os.ReadFile(path)
	if err == nil {
		_, err = libcni.NetworkPluginConfFromBytes(raw)
	}
	return err
}

func isConflist(path string) bool { return filepath.Ext(path) == ".conflist" }
