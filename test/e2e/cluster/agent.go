package cluster

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// The node agent as the local cluster runs it: a DaemonSet on the host
// network from the locally built image, which installs meshlet-cni into
// the node's CNI dirs (the path a real cluster takes) and registers the
// node's injected pods with the node's Consul client agent.
const (
	AgentName = "meshlet-agent"
	AgentPort = 9402
)

// AgentKubeconfigDir holds the plugin's kubeconfig on the host; the agent
// mounts it at the same path, because the path it writes into the
// conflist is read by the plugin on the host.
func (c *Cluster) AgentKubeconfigDir() string { return c.path("meshlet") }

// AgentSocketDir holds the agent's pod cache socket, at the same path on
// the host (where the plugin dials it) and in the agent's container.
func (c *Cluster) AgentSocketDir() string { return c.path("run") }

// AgentArgs are the agent's flags on the local cluster.
func (c *Cluster) AgentArgs() []string {
	return []string{"agent", "-log-level", "debug",
		"-listen", fmt.Sprintf("$(HOST_IP):%d", AgentPort),
		"-cni-kubeconfig", c.AgentKubeconfigDir() + "/meshlet-cni.kubeconfig",
		"-cni-log-file", c.path("logs", "meshlet-cni.log"), "-cni-log-level", "debug",
		"-cni-agent-socket", c.AgentSocketDir() + "/cni.sock"}
}

func agentRBAC() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		// Its node's pods (a field selector on the watch), and delete for
		// the repair of a pod that started before the plugin.
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "delete"}},
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}
}

func (c *Cluster) agentObjects() []func(ctx context.Context, cs kubernetes.Interface) error {
	ns := MeshletNamespace
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: AgentName, Namespace: ns}}
	subj := []rbacv1.Subject{{Kind: "ServiceAccount", Name: AgentName, Namespace: ns}}
	cr := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: AgentName}, Rules: agentRBAC()}
	crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: AgentName}, Subjects: subj,
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: AgentName}}
	// In its own namespace: tokens of the plugin's ServiceAccount only,
	// and its DaemonSet, to tell an uninstall from a rolling update.
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: AgentName, Namespace: ns}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, ResourceNames: []string{CNIServiceAccount}, Verbs: []string{"create"}},
		{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, Verbs: []string{"get"}},
	}}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: AgentName, Namespace: ns}, Subjects: subj,
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: AgentName}}
	cniSA, cniRole, cniBinding := cniIdentity()
	return []func(ctx context.Context, cs kubernetes.Interface) error{
		func(ctx context.Context, cs kubernetes.Interface) error {
			_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
			return err
		},
		func(ctx context.Context, cs kubernetes.Interface) error {
			_, err := cs.RbacV1().ClusterRoles().Create(ctx, cr, metav1.CreateOptions{})
			return err
		},
		func(ctx context.Context, cs kubernetes.Interface) error {
			_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{})
			return err
		},
		func(ctx context.Context, cs kubernetes.Interface) error {
			_, err := cs.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{})
			return err
		},
		func(ctx context.Context, cs kubernetes.Interface) error {
			_, err := cs.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{})
			return err
		},
		func(ctx context.Context, cs kubernetes.Interface) error {
			_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, cniSA, metav1.CreateOptions{})
			return err
		},
		func(ctx context.Context, cs kubernetes.Interface) error {
			_, err := cs.RbacV1().ClusterRoles().Create(ctx, cniRole, metav1.CreateOptions{})
			return err
		},
		func(ctx context.Context, cs kubernetes.Interface) error {
			_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, cniBinding, metav1.CreateOptions{})
			return err
		},
		func(ctx context.Context, cs kubernetes.Interface) error {
			_, err := cs.AppsV1().DaemonSets(ns).Create(ctx, c.AgentDaemonSet(), metav1.CreateOptions{})
			return err
		},
	}
}

// AgentDaemonSet is the agent's DaemonSet. It is privileged: it writes the
// host's CNI dirs and enters pods' network namespaces (hostPID) to check
// and repair their redirection, so that the pods themselves need nothing
// privileged.
func (c *Cluster) AgentDaemonSet() *appsv1.DaemonSet {
	labels := map[string]string{"app": AgentName}
	field := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	hostDir := func(name, host, mount string) (corev1.Volume, corev1.VolumeMount) {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
				Path: host, Type: ptr.To(corev1.HostPathDirectoryOrCreate)}}},
			corev1.VolumeMount{Name: name, MountPath: mount}
	}
	var vols []corev1.Volume
	var mounts []corev1.VolumeMount
	for _, d := range [][3]string{
		{"cni-bin", c.CNIBinDir(), "/host/opt/cni/bin"},
		{"cni-conf", c.CNIConfDir(), "/host/etc/cni/net.d"},
		{"cni-kubeconfig", c.AgentKubeconfigDir(), c.AgentKubeconfigDir()},
		{"logs", c.path("logs"), c.path("logs")},
		{"socket", c.AgentSocketDir(), c.AgentSocketDir()},
	} {
		v, m := hostDir(d[0], d[1], d[2])
		vols, mounts = append(vols, v), append(mounts, m)
	}
	probe := func(path string) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: path, Port: intstr.FromInt32(AgentPort)}}, PeriodSeconds: 1}
	}
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: AgentName, Namespace: MeshletNamespace},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName:            AgentName,
					HostNetwork:                   true,
					HostPID:                       true,
					DNSPolicy:                     corev1.DNSClusterFirstWithHostNet,
					PriorityClassName:             "system-node-critical",
					TerminationGracePeriodSeconds: ptr.To[int64](5),
					Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					Volumes:                       vols,
					Containers: []corev1.Container{{
						Name: "agent", Image: MeshletImage, ImagePullPolicy: corev1.PullNever,
						Args: c.AgentArgs(),
						Env: []corev1.EnvVar{field("NODE_NAME", "spec.nodeName"), field("HOST_IP", "status.hostIP"),
							field("POD_NAME", "metadata.name"), field("POD_NAMESPACE", "metadata.namespace"),
							// The API server itself, not its ClusterIP: the agent
							// and the plugin run in the host's netns, which must
							// not depend on kube-proxy (at node boot it may not
							// run yet; here the host cannot route ClusterIPs).
							{Name: "KUBERNETES_SERVICE_HOST", Value: NodeIP}, {Name: "KUBERNETES_SERVICE_PORT", Value: "6443"}},
						ReadinessProbe: probe("/readyz"),
						LivenessProbe:  probe("/healthz"),
						VolumeMounts:   mounts,
						// Root, where the image's default user is not: it
						// writes the host's CNI dirs.
						SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true), RunAsUser: ptr.To[int64](0)},
					}},
				},
			},
		},
	}
}

// InstallAgent runs the agent and waits until its pod is ready and
// containerd has loaded the conflist it chained meshlet-cni into.
func (c *Cluster) InstallAgent(ctx context.Context) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: MeshletNamespace}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("install the agent: %w", err)
	}
	for _, create := range c.agentObjects() {
		if err := create(ctx, cs); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("install the agent: %w", err)
		}
	}
	if err := c.waitFor(ctx, "the agent to be ready", func(ctx context.Context) error { return AgentReady(ctx, cs) }); err != nil {
		return err
	}
	return c.waitFor(ctx, "containerd to load meshlet-cni", func(ctx context.Context) error {
		return c.RuntimeUsesPlugin(ctx, "meshlet-cni")
	})
}

// AgentReady says the agent's DaemonSet has its pod ready on the node.
func AgentReady(ctx context.Context, cs kubernetes.Interface) error {
	ds, err := cs.AppsV1().DaemonSets(MeshletNamespace).Get(ctx, AgentName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if ds.Status.DesiredNumberScheduled == 0 || ds.Status.NumberReady != ds.Status.DesiredNumberScheduled ||
		ds.Status.UpdatedNumberScheduled != ds.Status.DesiredNumberScheduled || ds.Status.ObservedGeneration != ds.Generation {
		return fmt.Errorf("agent DaemonSet: %d of %d pods ready and updated", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
	}
	return nil
}
