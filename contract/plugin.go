package contract

// PluginType is meshlet-cni's "type" in a conflist, and the name of its
// binary in the runtime's CNI bin dir.
const PluginType = "meshlet-cni"

// CapabilityPodAnnotations is the capability meshlet-cni's conflist entry
// declares so that the runtime (containerd, CRI-O) passes the pod's
// annotations in the entry's runtimeConfig.
const CapabilityPodAnnotations = "io.kubernetes.cri.pod-annotations"

// NodeAgentSocket is where the node agent serves meshlet-cni (its pod
// cache and sandbox notices) unless told otherwise; ConflistEntry's
// agent_socket names it. The node agent's DaemonSet mounts its directory
// from the host: the plugin runs in the host's mount namespace.
const NodeAgentSocket = "/var/run/meshlet/cni.sock"

// ConflistEntry is meshlet's own keys of meshlet-cni's entry in the node's
// conflist: the node agent's installer writes it, the plugin reads it
// (beside the CNI spec's keys, "type" and "capabilities", which are not
// meshlet's). The JSON keys are what nodes already have on disk.
type ConflistEntry struct {
	// Kubeconfig is the path of the kubeconfig the node agent installs
	// for the plugin; its credentials need only get on pods.
	Kubeconfig string `json:"kubeconfig"`
	// LogLevel is debug, info (default), warn or error.
	LogLevel string `json:"log_level,omitempty"`
	// LogFile receives the plugin's structured logs; empty: stderr, which
	// the runtime shows only when a call fails. It must be absolute.
	LogFile string `json:"log_file,omitempty"`
	// IptablesMode is auto (empty, the default: the host's iptables
	// backend), nft or legacy. The node agent writes the mode it
	// resolved, so that the plugin and the node agent's repair check the
	// same backend.
	IptablesMode string `json:"iptables_mode,omitempty"`
	// PodLookupTimeout bounds the pod GET with its retries, as a Go
	// duration (empty: the plugin's default).
	PodLookupTimeout string `json:"pod_lookup_timeout,omitempty"`
	// LockDir holds the per-netns xtables locks of the legacy backend
	// (empty: the plugin's default).
	LockDir string `json:"lock_dir,omitempty"`
	// NodeAgentSocket is the node agent's socket (NodeAgentSocket unless
	// told otherwise), asked for the pod's annotations before the API
	// server when the runtime passes none, and told of each sandbox's IPs;
	// empty: the plugin does neither. It must be absolute.
	NodeAgentSocket string `json:"agent_socket,omitempty"`
}
