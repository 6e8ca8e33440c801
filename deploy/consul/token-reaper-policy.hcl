# The ACL policy of meshlet's token reaper (`meshlet reaper`;
# docs/identity.md, "No leaked tokens"). The reaper lists the login tokens
# of the sidecars' Kubernetes auth method and deletes each whose pod no
# longer lives: one that was force-deleted, deleted while its node was
# down, or whose sidecar crashed and logged in again. A sidecar destroys its
# own token when it stops (logout needs no right), but deleting another's
# token takes acl = "write", and Consul cannot narrow that right to one auth
# method's tokens: it lets its holder create, change and delete any token
# and policy, the management token's included. So no DaemonSet on every
# node holds it, nor the node agent, nor any sidecar: only the reaper, one
# small leader-elected Deployment (the chart's <name>-token-reaper) whose
# only other access is reading pods and holding its Lease. Nothing else
# (no service, node, key, intention or operator rights).
#
#   consul acl policy create -name meshlet-token-reaper \
#     -description "meshlet token reaper: deletes login tokens of pods that are gone" \
#     -rules @deploy/consul/token-reaper-policy.hcl
#   consul acl token create -description "meshlet token reaper" \
#     -policy-name meshlet-token-reaper
#   kubectl -n meshlet create secret generic meshlet-token-reaper-acl-token \
#     --from-literal=token=<the SecretID just printed>
#
# and give the chart consul.acl.reaper.tokenSecret.name
# meshlet-token-reaper-acl-token.
acl = "write"
