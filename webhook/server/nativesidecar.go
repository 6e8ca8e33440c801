package server

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/version"
)

// nativeSidecarSupported says whether the API server runs native sidecars
// (init containers with restartPolicy Always): on by default from 1.29. A
// 1.28 server has them only behind a feature gate the webhook cannot see,
// so it gets regular containers. Checked once at start: an API server
// upgrade restarts nothing here, and the webhook's pods are rolled with
// the upgrade anyway.
func nativeSidecarSupported(d interface{ ServerVersion() (*version.Info, error) }) (bool, error) {
	v, err := d.ServerVersion()
	if err != nil {
		return false, fmt.Errorf("API server version (for -native-sidecar=auto): %w", err)
	}
	major, err1 := strconv.Atoi(v.Major)
	// Some distributions write "29+".
	minor, err2 := strconv.Atoi(strings.TrimRight(v.Minor, "+"))
	if err1 != nil || err2 != nil {
		return false, fmt.Errorf("API server version %q.%q: expected numbers; set -native-sidecar true or false", v.Major, v.Minor)
	}
	return major > 1 || (major == 1 && minor >= 29), nil
}
