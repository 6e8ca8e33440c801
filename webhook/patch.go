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
// built from what injectInto changes: annotations added, env appended,
// HTTP probe ports moved, a volume of the sidecar's appended, the sidecar
// inserted where pl put it (n of them: data plane envoy's login sidecar
// goes before Envoy, its metrics sidecar after). Diffing
// the two pods' serialized forms instead made most of a review's
// allocations (two encodes, two decodes into generic maps; BenchmarkReview
// and docs/benchmarks.md#webhook-review have the figures), and the garbage
// set the tail latency. Touching only these paths also leaves alone any
// field this build's API types do not know.
// TestPatchReproducesInjection applies the patch to every golden and
// fuzzed pod and compares.
func patch(orig, injected *corev1.Pod, pl placement, n int) ([]jsonpatch.Operation, error) {
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

	// Set the sidecar aside where pl put it, to pair the app's containers
	// with their originals.
	initOut, out := injected.Spec.InitContainers, injected.Spec.Containers
	switch {
	case pl == placedNative && n >= 1 && len(initOut) >= n:
		initOut = initOut[n:]
	case pl == placedFirst && n >= 1 && len(out) >= n:
		out = out[n:]
	case pl == placedLast && n >= 1 && len(out) >= n:
		out = out[:len(out)-n]
	default:
		return nil, fmt.Errorf("patch: %d sidecars (%v) cannot have been added", n, pl)
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

	switch n := len(orig.Spec.Volumes); {
	case len(injected.Spec.Volumes) == n:
	case n == 0:
		add("/spec/volumes", injected.Spec.Volumes)
	default:
		for _, v := range injected.Spec.Volumes[n:] {
			add("/spec/volumes/-", v)
		}
	}
	switch {
	case pl == placedNative && len(orig.Spec.InitContainers) == 0:
		add("/spec/initContainers", injected.Spec.InitContainers[:n])
	case pl == placedNative:
		for i := range n {
			add(fmt.Sprintf("/spec/initContainers/%d", i), injected.Spec.InitContainers[i])
		}
	case pl == placedFirst:
		for i := range n {
			add(fmt.Sprintf("/spec/containers/%d", i), injected.Spec.Containers[i])
		}
	default:
		for _, c := range injected.Spec.Containers[len(injected.Spec.Containers)-n:] {
			add("/spec/containers/-", c)
		}
	}
	return ops, nil
}

// containerOps appends the env injectInto added to one container and moves
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
