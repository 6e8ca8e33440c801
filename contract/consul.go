package contract

// Meta keys every registration the node agent makes carries, consul-k8s'
// names; ManagedBy marks what the node agent's resync may remove.
const (
	MetaNamespace = "k8s-namespace"
	MetaPodName   = "pod-name"
	MetaPodUID    = "pod-uid"
	MetaManagedBy = "managed-by"
	ManagedBy     = "meshlet"
	// HealthCheckSuffix names the service's readiness check,
	// <service ID>/kubernetes-health-check. Its TTL is never left to
	// expire: the node agent sets it from the pod's Ready condition.
	HealthCheckSuffix = "/kubernetes-health-check"
)
