# The ACL policy of meshlet's node agent (docs/identity.md, "The node
# agent's token"). The node agent registers its node's injected pods with
# the node's Consul client agent, updates their TTL checks and deregisters
# them; it lists the client agent's services to find what it registered.
# Each of those needs service:write on the pod's service and its sidecar
# proxy, whose names only the pods say. Consul cannot narrow a service rule
# to one node, so this is write on every service name; nothing else (no
# node, key, intention, ACL or operator rights).
#
#   consul acl policy create -name meshlet-node-agent \
#     -description "meshlet node agent: registers its node's injected pods" \
#     -rules @deploy/consul/node-agent-policy.hcl
#   consul acl token create -description "meshlet node agent" \
#     -policy-name meshlet-node-agent
service_prefix "" {
  policy = "write"
}
