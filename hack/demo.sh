#!/usr/bin/env bash
# make demo: after cluster-up (which installs meshlet with its Helm chart),
# the seed's walkthrough on the local cluster, each command printed before
# its output: a meshed server and client, hello world through Kubernetes
# DNS and transparent proxy, a deny intention (curl exit code 52), allowed
# again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source .cluster/env
t0=$SECONDS
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
# run prints a command, then runs it; its failure is shown, not fatal.
run() { say "$*"; "$@" || true; }
# until_ok retries a command quietly until it succeeds (a new pod's sidecar
# and the catalog need a moment), then runs it once more for the reader.
until_ok() { until_exit 0 "$@"; }
# until_exit retries until a command exits with the given code, then runs
# it once more for the reader.
until_exit() {
  local code=$1; shift
  for _ in $(seq 60); do
    rc=0; "$@" >/dev/null 2>&1 || rc=$?
    [ "$rc" = "$code" ] && break
    sleep 0.5
  done
  run "$@"
}

# A second demo starts from a clean slate (waiting for the old pods: the
# seed's client ignores SIGTERM, hence the short grace period).
kubectl delete --ignore-not-found --grace-period=1 -f examples/mesh/ >/dev/null
consul intention delete static-client static-server >/dev/null 2>&1 || true
consul intention delete '*' static-server >/dev/null 2>&1 || true
secure=  # make demo SECURE=1: Consul with ACLs (default deny) and TLS, reached over HTTPS
case $CONSUL_HTTP_ADDR in https://*) secure=1 ;; esac

run helm list --namespace meshlet
run kubectl get pods --namespace meshlet
if [ -n "$secure" ]; then
  echo
  echo "Consul runs with ACLs (default deny) and TLS only: the consul CLI goes to $CONSUL_HTTP_ADDR"
  echo "with the CA in \$CONSUL_CACERT and the management token; each sidecar logs in to the"
  echo "Kubernetes auth method as its pod's ServiceAccount. With default deny, an intention must"
  echo "allow the client; this one allows every source, so that the seed's deny below wins and"
  echo "its deletion brings the answer back."
  run consul acl auth-method list
  # Not -replace: that edits through config entries, after which the seed's
  # `consul intention create` (the legacy API) is refused for this service.
  run consul intention create -allow '*' static-server
fi

run kubectl apply -f examples/mesh/static-server.yaml
kubectl rollout status deploy/static-server --timeout=120s >/dev/null
run kubectl get pods -l app=static-server \
  -o 'custom-columns=POD:.metadata.name,STATUS:.metadata.annotations.consul\.hashicorp\.com/connect-inject-status,CONTAINERS:.spec.containers[*].name,IP:.status.podIP'
until_ok consul catalog services

run kubectl apply -f examples/mesh/static-client.yaml
kubectl rollout status deploy/static-client --timeout=120s >/dev/null
until_ok kubectl exec deploy/static-client -- curl -s http://static-server/

run consul intention create -deny static-client static-server
until_exit 52 kubectl exec deploy/static-client -- curl -s http://static-server/

run consul intention delete static-client static-server
until_ok kubectl exec deploy/static-client -- curl -s http://static-server/
if [ -n "$secure" ]; then
  # Each sidecar's own login token, named by its pod (no secret shown).
  say "consul acl token list -format json | grep -E '\"(Description|ServiceName)\": \".*(login|static)'"
  consul acl token list -format json | grep -E '"(Description|ServiceName)": ".*(login|static)' || true
fi

cat <<TEXT

The walkthrough took $((SECONDS - t0)) s. The cluster keeps running:
  source .cluster/env                 kubectl, consul and helm on this cluster
  kubectl get pods -A                 meshlet runs in namespace meshlet
  consul catalog services             what the node agent registered
  consul intention create -deny static-client static-server
  make cluster-down                   stop it all and restore the host
TEXT
