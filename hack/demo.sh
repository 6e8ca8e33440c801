#!/usr/bin/env bash
# make demo: after cluster-up, show the local cluster working.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source .cluster/env
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

say kubectl get nodes -o wide
kubectl get nodes -o wide
say consul members
consul members
say kubectl apply -f examples/hello/
kubectl apply -f examples/hello/
kubectl rollout status deploy/static-server --timeout=120s
kubectl rollout status deploy/static-client --timeout=120s
server_ip=$(kubectl get pod -l app=static-server -o jsonpath='{.items[0].status.podIP}')
say kubectl exec deploy/static-client -- curl -s http://$server_ip:8080/
kubectl exec deploy/static-client -- curl -s "http://$server_ip:8080/"
svc_ip=$(kubectl get svc static-server -o jsonpath='{.spec.clusterIP}')
say kubectl exec deploy/static-client -- curl -s http://$svc_ip/   "# the Service's ClusterIP"
# kube-proxy programs a new Service within a second or two: retry until then.
for i in $(seq 20); do
  kubectl exec deploy/static-client -- curl -s "http://$svc_ip/" && break
  [ "$i" = 20 ] && exit 1
  sleep 0.5
done
echo
echo "The cluster keeps running: 'source .cluster/env' to use it, 'make cluster-down' to stop it."
