# The ACL policy of meshlet's node agent on Consul Enterprise with
# namespaces (global.enableConsulNamespaces), in place of
# node-agent-policy.hcl (docs/operations.md, "Consul Enterprise
# namespaces"). Created in the default namespace, as that one is.
#
# Pods are registered in the namespace the webhook chose (the destination
# namespace, or the mirror of their Kubernetes namespace): service:write in
# every namespace, since a rule outside a namespace block holds in the
# policy's own namespace only.
#
# The node agent also creates a pod's namespace when it is missing, as
# consul-k8s' injector does: Consul grants that with operator:write alone,
# and attaching the cross-namespace policy as the new namespace's default
# (consul.acl.crossNamespacePolicy; set by global.acls.manageSystemACLs)
# takes acl:write too. Those two rights go to every node: the token could
# then change Consul's servers' settings and mint any token. To keep them
# off the nodes, delete the two lines below and create each namespace
# beforehand, with the policy as its default:
#
#   consul namespace create -name <namespace> \
#     -default-policy-name cross-namespace-policy
#
# The node agent then finds the namespace and creates nothing; a pod whose
# namespace is missing stays unregistered, with the Event
# MeshletNamespaceFailed saying which.
#
#   consul acl policy create -name meshlet-node-agent \
#     -description "meshlet node agent: registers its node's injected pods" \
#     -rules @deploy/consul/node-agent-policy-namespaces.hcl
#   consul acl token create -description "meshlet node agent" \
#     -policy-name meshlet-node-agent
namespace_prefix "" {
  service_prefix "" {
    policy = "write"
  }
}
operator = "write"
acl      = "write"
