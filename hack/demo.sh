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

# The webhook: what it adds to a pod, and what it refuses.
pod=$(mktemp)
trap 'rm -f "$pod"' EXIT
cat > "$pod" <<YAML
apiVersion: v1
kind: Pod
metadata:
  generateName: static-server-
  annotations: {consul.hashicorp.com/connect-inject: "true"}
spec:
  containers:
  - {name: static-server, image: localhost/meshlet/static-server:dev, ports: [{containerPort: 8080}]}
YAML
say kubectl create --dry-run=server -f pod.yaml "# a pod with consul.hashicorp.com/connect-inject: \"true\""
kubectl create --dry-run=server -f "$pod" -o go-template='init containers: {{range .spec.initContainers}}{{.name}} (restartPolicy {{.restartPolicy}}) {{end}}
containers: {{range .spec.containers}}{{.name}} {{end}}
{{range $k, $v := .metadata.annotations}}{{$k}}: {{printf "%.90s" $v}}
{{end}}'
say kubectl apply -f examples/injection/bad-upstream.yaml
kubectl apply -f examples/injection/bad-upstream.yaml || true

# The node agent: it chained meshlet-cni and registers injected pods.
say kubectl -n meshlet get daemonset meshlet-agent
kubectl -n meshlet get daemonset meshlet-agent
say kubectl apply -f examples/agent/
kubectl apply -f examples/agent/
kubectl rollout status deploy/web --timeout=120s
# Ready pods are registered: their sidecars needed the registration to start.
say curl -s \$CONSUL_HTTP_ADDR/v1/catalog/service/web "# one instance per pod, at the pod's IP"
curl -s "http://$CONSUL_HTTP_ADDR/v1/catalog/service/web" | tr '{,' '\n\n' | grep -E '"(ServiceID|ServiceAddress)"' | paste - - || true
say kubectl scale deploy/web --replicas=1 "# and the catalog follows"
kubectl scale deploy/web --replicas=1
for i in $(seq 40); do
  n=$(curl -s "http://$CONSUL_HTTP_ADDR/v1/catalog/service/web" | grep -o '"ServiceID"' | wc -l)
  [ "$n" = 1 ] && break
  sleep 0.25
done
curl -s "http://$CONSUL_HTTP_ADDR/v1/catalog/service/web" | tr '{,' '\n\n' | grep -E '"(ServiceID|ServiceAddress)"' | paste - - || true
echo
echo "The cluster keeps running: 'source .cluster/env' to use it, 'make cluster-down' to stop it."
