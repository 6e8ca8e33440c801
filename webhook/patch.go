package webhook

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
)

// patch is the JSON patch from the pod as submitted to the injected one,
// built from what inject1 changes: annotations added, env appended, HTTP
// probe ports moved, the sidecar inserted. Diffing the two pods'
// serialized forms instead cost 72 % of a review's allocations (two
// encodes, two decodes into generic maps; BenchmarkReview), and the garbage
// set the tail latency. Touching only these paths also leaves alone any
// field this build's API types do not know. TestPatchReproducesInjection
// applies the patch to every golden and fuzzed pod and compares.
func patch(orig, injected *corev1.Pod) ([]jsonpatch.Operation, error) {
	var ops []jsonpatch.Operation
	add := func(path string, v any) { ops = append(ops, jsonpatch.NewOperation("add", path, v)) }

	if len(orig.Annotations) == 0 {
		add("/metadata/annotations", injected.Annotations)
	} else {
		for _, k := range slices.Sorted(maps.Keys(injected.Annotations)) {
			if v, ok := orig.Annotations[k]; !ok || v != injected.Annotations[k] {
				add("/metadata/annotations/"+escape(k), injected.Annotations[k])
			}
		}
	}

	// The sidecar goes first in initContainers, or first (holdsApp) or
	// last in containers: skip it when pairing the app's containers with
	// their originals. Its name is reserved (validate), so it is found by
	// name.
	native := len(injected.Spec.InitContainers) == len(orig.Spec.InitContainers)+1
	initOut := injected.Spec.InitContainers
	if native {
		initOut = initOut[1:]
	}
	out := injected.Spec.Containers
	first := !native && len(out) == len(orig.Spec.Containers)+1 && isSidecarName(out[0].Name)
	if first {
		out = out[1:]
	} else if len(out) > len(orig.Spec.Containers) {
		out = out[:len(orig.Spec.Containers)]
	}
	lists := []struct {
		path      string
		orig, out []corev1.Container
	}{
		{"/spec/initContainers", orig.Spec.InitContainers, initOut},
		{"/spec/containers", orig.Spec.Containers, out},
	}
	for _, l := range lists {
		if len(l.out) != len(l.orig) {
			return nil, fmt.Errorf("patch: %s: %d containers became %d", l.path, len(l.orig), len(l.out))
		}
		for i := range l.orig {
			base := fmt.Sprintf("%s/%d", l.path, i)
			if err := containerOps(base, &l.orig[i], &l.out[i], add); err != nil {
				return nil, err
			}
		}
	}

	switch {
	case native && len(orig.Spec.InitContainers) == 0:
		add("/spec/initContainers", injected.Spec.InitContainers[:1])
	case native:
		add("/spec/initContainers/0", injected.Spec.InitContainers[0])
	case first:
		add("/spec/containers/0", injected.Spec.Containers[0])
	case len(injected.Spec.Containers) == len(orig.Spec.Containers)+1:
		add("/spec/containers/-", injected.Spec.Containers[len(orig.Spec.Containers)])
	default:
		return nil, fmt.Errorf("patch: no sidecar was added")
	}
	return ops, nil
}

// containerOps appends the env inject1 added to one container and moves
// its HTTP probes' ports.
func containerOps(base string, orig, out *corev1.Container, add func(string, any)) error {
	switch n := len(orig.Env); {
	case len(out.Env) < n:
		return fmt.Errorf("patch: %s lost env", base)
	case len(out.Env) == n:
	case n == 0:
		add(base+"/env", out.Env)
	default:
		for _, e := range out.Env[n:] {
			add(base+"/env/-", e)
		}
	}
	for _, p := range []struct {
		name      string
		orig, out *corev1.Probe
	}{{"livenessProbe", orig.LivenessProbe, out.LivenessProbe}, {"readinessProbe", orig.ReadinessProbe, out.ReadinessProbe},
		{"startupProbe", orig.StartupProbe, out.StartupProbe}} {
		if p.orig == nil || p.orig.HTTPGet == nil || p.orig.HTTPGet.Port == p.out.HTTPGet.Port {
			continue
		}
		// add on an existing member replaces it.
		add(base+"/"+p.name+"/httpGet/port", p.out.HTTPGet.Port)
	}
	return nil
}

// escape is a JSON pointer token (RFC 6901): annotation keys hold '/'.
func escape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}
