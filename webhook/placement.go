package webhook

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// placement is where a pod's sidecar goes. placeSidecar decides it once
// per pod; the sidecar's builder and the patch are handed it rather than
// working it out again from the config or from the containers they see.
type placement int

const (
	// placedNative: a native sidecar, first in initContainers with
	// restartPolicy Always; its startup probe holds the app.
	placedNative placement = iota + 1
	// placedFirst: a regular container, first in containers, whose
	// postStart hook holds the app until the proxy serves (Istio's
	// holdApplicationUntilProxyStarts, without a setting).
	placedFirst
	// placedLast: a regular container after the app's, with a readiness
	// probe only: nothing holds the app.
	placedLast
)

func (p placement) String() string {
	switch p {
	case placedNative:
		return "native sidecar, first in initContainers"
	case placedFirst:
		return "regular container, first in containers, holding the app"
	case placedLast:
		return "regular container, last in containers"
	}
	return fmt.Sprintf("placement(%d)", int(p))
}

// placeSidecar decides where pod's sidecar goes. Only the meshlet data
// plane can hold the app from a regular container: its proxy has the wait
// command a postStart hook runs.
//
// With FastStart, a pod that runs until deleted and has no init containers
// of its own gets a regular container that holds the app instead of a
// native sidecar: kubelet starts its app right after the container's hook
// rather than one PLEG relist after a native sidecar (Config.FastStart).
// The others keep the native sidecar: a pod that runs to completion (a
// Job's) would never end with a regular sidecar still running, and the
// pod's own init containers, whose traffic meshlet-cni already redirects,
// would find no proxy before the containers start.
func placeSidecar(pod *corev1.Pod, cfg Config) placement {
	holds := cfg.DataPlane == DataPlaneMeshlet
	switch {
	case !cfg.NativeSidecar && holds:
		return placedFirst
	case !cfg.NativeSidecar:
		return placedLast
	case !cfg.FastStart || !holds:
		return placedNative
	case pod.Spec.RestartPolicy != "" && pod.Spec.RestartPolicy != corev1.RestartPolicyAlways:
		return placedNative
	case len(pod.Spec.InitContainers) > 0:
		return placedNative
	}
	return placedFirst
}
