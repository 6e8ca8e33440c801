package webhook

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestPlaceSidecar: where the sidecar goes, by configuration and pod.
func TestPlaceSidecar(t *testing.T) {
	withInit := func(p *corev1.Pod) { p.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "m"}} }
	restart := func(r corev1.RestartPolicy) func(*corev1.Pod) {
		return func(p *corev1.Pod) { p.Spec.RestartPolicy = r }
	}
	noNative := func(c *Config) { c.NativeSidecar = false }
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		cfg  Config
		want placement
	}{
		{"meshlet, long-running: regular container", app(on()), meshletCfg(), placedFirst},
		{"restartPolicy Always said", app(on(), restart(corev1.RestartPolicyAlways)), meshletCfg(), placedFirst},
		{"Job (OnFailure)", app(on(), restart(corev1.RestartPolicyOnFailure)), meshletCfg(), placedNative},
		{"Job (Never)", app(on(), restart(corev1.RestartPolicyNever)), meshletCfg(), placedNative},
		{"own init containers", app(on(), withInit), meshletCfg(), placedNative},
		{"native forced", app(on()), meshletCfg(func(c *Config) { c.FastStart = false }), placedNative},
		{"envoy has no hold", app(on()), DefaultConfig(), placedNative},
		{"consul has no hold", app(on()), consulCfg(), placedNative},
		{"envoy Job", app(on(), restart(corev1.RestartPolicyNever)), DefaultConfig(), placedNative},
		{"no native sidecars", app(on(), restart(corev1.RestartPolicyNever)), meshletCfg(noNative), placedFirst},
		{"no native sidecars, own init containers", app(on(), withInit), meshletCfg(noNative), placedFirst},
		{"no native sidecars, envoy", app(on()), func() Config { c := DefaultConfig(); noNative(&c); return c }(), placedLast},
		{"no native sidecars, consul", app(on()), consulCfg(noNative), placedLast},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := placeSidecar(tc.pod, tc.cfg); got != tc.want {
				t.Fatalf("placeSidecar = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestSidecarWherePlaced: for every golden case injected, the sidecar is
// where placeSidecar says, with what holds the app there: a startup probe
// for a native sidecar, a postStart hook for a regular container first.
func TestSidecarWherePlaced(t *testing.T) {
	for _, tc := range goldenCases {
		res, injected := mutate(tc.pod, tc.ns, tc.cfg)
		if res.Patch == nil {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			pl := placeSidecar(tc.pod, tc.cfg)
			ic, c := injected.Spec.InitContainers, injected.Spec.Containers
			var s corev1.Container
			switch pl {
			case placedNative:
				s = ic[0]
			case placedFirst:
				s = c[0]
			case placedLast:
				s = c[len(c)-1]
			}
			if !isSidecarName(s.Name) {
				t.Fatalf("%v: found container %q there", pl, s.Name)
			}
			native := s.RestartPolicy != nil && *s.RestartPolicy == corev1.ContainerRestartPolicyAlways
			hook := s.Lifecycle != nil && s.Lifecycle.PostStart != nil
			if native != (pl == placedNative) || (s.StartupProbe != nil) != native || hook != (pl == placedFirst) {
				t.Errorf("%v: restartPolicy Always %v, startup probe %v, postStart hook %v", pl, native, s.StartupProbe != nil, hook)
			}
		})
	}
}
