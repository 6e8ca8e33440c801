#!/usr/bin/env bash
# Runs meshlet's e2e suite on a kind cluster (docs/kind.md): builds the
# images with Docker, creates the cluster (kind-config.yaml), loads the
# images into its nodes, installs Consul with the official chart
# (consul-values.yaml) and meshlet with ours (meshlet-values.yaml, data
# plane envoy), forwards the worker's Consul client agent to 127.0.0.1,
# runs `go test ./test/e2e/` against the cluster, and deletes the cluster
# at the end unless KEEP=1.
#
# Settings (environment):
#   CLUSTER               kind cluster name (meshlet-e2e)
#   KEEP=1                leave the cluster running afterwards
#   CONSUL_CHART          the official Consul chart: a repository chart
#                         (hashicorp/consul, after `helm repo add hashicorp
#                         https://helm.releases.hashicorp.com`) or a directory
#   CONSUL_CHART_VERSION  its version, for a repository chart (1.9.0)
#   KIND_NODE_IMAGE       kind's node image (kind's default for its version)
#   CONSUL_LOCAL_PORT     127.0.0.1 port of the forwarded agent (28500)
#   E2E_RUN               go test -run pattern (all tests)
#   E2E_TIMEOUT           go test -timeout (40m)
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
here="$root/test/e2e/kind"
bin="$root/bin"

CLUSTER=${CLUSTER:-meshlet-e2e}
KEEP=${KEEP:-0}
CONSUL_CHART=${CONSUL_CHART:-hashicorp/consul}
CONSUL_CHART_VERSION=${CONSUL_CHART_VERSION:-1.9.0}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}
CONSUL_LOCAL_PORT=${CONSUL_LOCAL_PORT:-28500}
E2E_RUN=${E2E_RUN:-.}
E2E_TIMEOUT=${E2E_TIMEOUT:-40m}

# The images take the local cluster's names: the suite's image flags
# default to them and examples/mesh/ names them (kind_test.go checks both).
MESHLET_IMAGE=localhost/meshlet/meshlet:dev
STATIC_SERVER_IMAGE=localhost/meshlet/static-server:dev
STATIC_CLIENT_IMAGE=localhost/meshlet/static-client:dev
PAUSE_IMAGE=localhost/meshlet/pause:dev

die() { echo "run.sh: $*" >&2; exit 1; }
step() { printf '==> %s\n' "$*"; }

step "prerequisites"
command -v docker >/dev/null || die "docker: not found. kind runs the cluster's nodes as Docker containers, and the images are built with it."
docker info >/dev/null 2>&1 || die "'docker info' failed: start the Docker engine, or give this user access to it."
command -v go >/dev/null || die "go: not found. kind, helm and consul are built from pinned modules (test/tools/) with it."
# kind, helm and the consul CLI (the suite's intentions), pinned, into bin/.
"$root/hack/tools.sh" kind_prereqs
export PATH="$bin:$PATH"
command -v kubectl >/dev/null || die "kubectl: not in bin/ nor on \$PATH. Install it, or run 'make tools' (it builds bin/kubectl)."
if [ -d "$CONSUL_CHART" ]; then
  consul_chart=("$CONSUL_CHART")
else
  consul_chart=("$CONSUL_CHART" --version "$CONSUL_CHART_VERSION")
fi
helm show chart "${consul_chart[@]}" >/dev/null 2>&1 ||
  die "the official Consul chart ${consul_chart[*]} is not available to helm. Add HashiCorp's repository" \
    "(helm repo add hashicorp https://helm.releases.hashicorp.com && helm repo update), or set CONSUL_CHART to the chart's directory."
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  die "a kind cluster named $CLUSTER exists already: delete it (kind delete cluster --name $CLUSTER) or set CLUSTER."
fi

work="$bin/kind-e2e/$CLUSTER"
mkdir -p "$work"
kubeconfig="$work/kubeconfig"
export KUBECONFIG="$kubeconfig" # kubectl and helm below; the user's own kubeconfig is left alone
created=0
pf_pid=""
cleanup() {
  local rc=$?
  if [ -n "$pf_pid" ]; then
    kill "$pf_pid" 2>/dev/null || true
    wait "$pf_pid" 2>/dev/null || true
  fi
  if [ "$created" = 1 ]; then
    if [ "$KEEP" = 1 ]; then
      echo "KEEP=1: cluster $CLUSTER left running; KUBECONFIG=$kubeconfig"
    else
      step "deleting cluster $CLUSTER"
      kind delete cluster --name "$CLUSTER" --kubeconfig "$kubeconfig" || true
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT

step "images"
make -C "$root" images IMAGE="$MESHLET_IMAGE"
for target in static-server static-client pause; do
  case $target in
    static-server) ref=$STATIC_SERVER_IMAGE ;;
    static-client) ref=$STATIC_CLIENT_IMAGE ;;
    pause) ref=$PAUSE_IMAGE ;;
  esac
  docker build -f "$here/Dockerfile" --target "$target" -t "$ref" "$root"
done
# The sidecar's image, loaded too: the first injected pod must not wait
# for a pull longer than the tests wait for it.
envoy_image=$(helm template meshlet "$root/deploy/daemonset" -f "$here/meshlet-values.yaml" |
  awk '/- -envoy-image$/ { getline; gsub(/"/, "", $2); print $2; exit }')
[ -n "$envoy_image" ] || die "no -envoy-image in the chart's rendering with meshlet-values.yaml"
docker pull "$envoy_image"

step "cluster $CLUSTER"
node_image=()
[ -n "$KIND_NODE_IMAGE" ] && node_image=(--image "$KIND_NODE_IMAGE")
created=1
kind create cluster --name "$CLUSTER" --config "$here/kind-config.yaml" --kubeconfig "$kubeconfig" "${node_image[@]}" --wait 120s
for ref in "$MESHLET_IMAGE" "$STATIC_SERVER_IMAGE" "$STATIC_CLIENT_IMAGE" "$PAUSE_IMAGE" "$envoy_image"; do
  kind load docker-image --name "$CLUSTER" "$ref"
done

step "Consul (${consul_chart[*]})"
helm install consul "${consul_chart[@]}" --namespace consul --create-namespace \
  -f "$here/consul-values.yaml" --wait --timeout 10m

step "meshlet (deploy/daemonset)"
# The agent is privileged: under Pod Security admission its namespace
# must allow it (docs/operations.md).
kubectl create namespace meshlet
kubectl label namespace meshlet pod-security.kubernetes.io/enforce=privileged
helm install meshlet "$root/deploy/daemonset" --namespace meshlet \
  -f "$here/meshlet-values.yaml" --wait --timeout 5m

step "the worker's Consul client agent on 127.0.0.1:$CONSUL_LOCAL_PORT"
worker=$(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[0].metadata.name}')
agent=$(kubectl -n consul get pods -l app=consul,component=client --field-selector "spec.nodeName=$worker" -o name)
[ -n "$agent" ] || die "no Consul client agent pod on node $worker"
kubectl -n consul port-forward "$agent" "$CONSUL_LOCAL_PORT:8500" >"$work/port-forward.log" 2>&1 &
pf_pid=$!
for _ in $(seq 1 30); do
  consul members -http-addr "127.0.0.1:$CONSUL_LOCAL_PORT" >/dev/null 2>&1 && break
  kill -0 "$pf_pid" 2>/dev/null || die "kubectl port-forward exited: $(cat "$work/port-forward.log")"
  sleep 1
done
consul members -http-addr "127.0.0.1:$CONSUL_LOCAL_PORT"

step "e2e suite"
cd "$root"
go test -count=1 -v -timeout "$E2E_TIMEOUT" ./test/e2e/ -run "$E2E_RUN" -args \
  -e2e.kubeconfig="$kubeconfig" -e2e.consul-addr="127.0.0.1:$CONSUL_LOCAL_PORT" -e2e.data-plane=envoy \
  -e2e.static-server-image="$STATIC_SERVER_IMAGE" -e2e.static-client-image="$STATIC_CLIENT_IMAGE" \
  -e2e.pause-image="$PAUSE_IMAGE"
