#!/usr/bin/env bash
# Installs everything the local cluster and the tests need, idempotently.
# Debian packages come from apt; every Go tool is built from a pinned wrapper
# module under test/tools/ into bin/, and rebuilt only when its pin changes
# (the stamp holds a hash of the wrapper's go.mod, go.sum and this script's
# build flags).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
mkdir -p "$bin/.stamps"
export CGO_ENABLED=0 GOFLAGS=-mod=mod

step() { # step NAME CMD...: run and time one step
  local name=$1 t0=$SECONDS; shift
  printf '==> %s\n' "$name"
  "$@"
  printf '    %s: %ds\n' "$name" $((SECONDS - t0))
}

apt_packages=(etcd-server containerd runc iptables
  conntrack socat openssl iproute2 util-linux busybox-static nftables shellcheck mmdebstrap)
install_apt() {
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { echo "    all present"; return; }
  echo "    installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged services; the harness runs its own instances.
  for s in containerd etcd; do
    systemctl disable --now "$s" >/dev/null 2>&1 || true
  done
}

# build_go WRAPPER_DIR LDFLAGS PKG... : build the packages of a wrapper module
# into bin/ (into $OUT instead when set).
build_go() {
  local dir=$1 ldflags=$2; shift 2
  local name key out=${OUT:-$bin}
  name=$(basename "$dir")
  key=$(cat "$root/$dir/go.mod" "$root/$dir/go.sum" <(echo "$ldflags" "$*" ${OUT:+"$OUT"}) | sha256sum | cut -c1-16)
  local ok=1
  for p in "$@"; do [ -x "$out/$(basename "$p")" ] || ok=0; done
  if [ $ok = 1 ] && [ "$(cat "$bin/.stamps/$name" 2>/dev/null)" = "$key" ]; then
    echo "    cached ($key)"; return
  fi
  mkdir -p "$out"
  (cd "$root/$dir" && go build -trimpath -ldflags "$ldflags" -o "$out/" "$@") 2>&1 |
    { grep -v '^go: downloading' || true; }
  [ "${PIPESTATUS[0]}" = 0 ] || return 1
  echo "$key" >"$bin/.stamps/$name"
}

k8s_version=v1.34.4
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34 \
-X k8s.io/client-go/pkg/version.gitVersion=$k8s_version \
-X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=34"
consul_ldflags="-s -w -X github.com/hashicorp/consul/version.GitCommit=meshlet-pinned"

all() {
  step "apt packages" install_apt
  step "kubernetes $k8s_version" build_go test/tools/k8s "$k8s_ldflags" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubeadm
  step "consul" build_go test/tools/consul "$consul_ldflags" github.com/hashicorp/consul
  step "http-echo" build_go test/tools/http-echo "-s -w" github.com/hashicorp/http-echo
  step "coredns" build_go test/tools/coredns "-s -w" github.com/coredns/coredns
  step "helm" build_go test/tools/helm "-s -w" helm.sh/helm/v3/cmd/helm
  step "staticcheck" build_go test/tools/staticcheck "-s -w" honnef.co/go/tools/cmd/staticcheck
}

# What test/e2e/kind/run.sh needs besides Docker and kubectl, on a machine
# that may have none of the rest: the consul CLI (the suite's intentions),
# helm (the charts) and kind. No apt: that machine need not be Debian.
kind_prereqs() {
  step "consul" build_go test/tools/consul "$consul_ldflags" github.com/hashicorp/consul
  step "helm" build_go test/tools/helm "-s -w" helm.sh/helm/v3/cmd/helm
  step "kind" build_go test/tools/kind "-s -w" sigs.k8s.io/kind
}

# pinned_version WRAPPER_DIR MODULE: the version the wrapper module requires.
pinned_version() { awk -v m="$2" '{ for (i = 1; i < NF; i++) if ($i == m) print $(i + 1) }' "$root/$1/go.mod"; }

# What the kind node image holds besides the Kubernetes binaries (make
# kind-up; test/e2e/kind/nodeimage): the versions of etcd and CoreDNS that
# kubeadm names, crictl, and kube-router, the kind cluster's CNI. Into
# bin/kindnode/: bin/coredns is the local cluster's own, newer CoreDNS.
kind_node() {
  local crictl_v kr_v
  crictl_v=$(pinned_version test/tools/crictl sigs.k8s.io/cri-tools)
  kr_v=$(pinned_version test/tools/kube-router github.com/cloudnativelabs/kube-router/v2)
  step "kind" build_go test/tools/kind "-s -w" sigs.k8s.io/kind
  export OUT="$bin/kindnode"
  step "etcd (kind node)" build_go test/tools/etcd "-s -w" github.com/meshlet/meshlet/test/tools/etcd/cmd/etcd
  step "coredns (kind node)" build_go test/tools/coredns-kubeadm "-s -w" github.com/coredns/coredns
  step "crictl" build_go test/tools/crictl "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$crictl_v" \
    sigs.k8s.io/cri-tools/cmd/crictl
  step "kube-router" build_go test/tools/kube-router \
    "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$kr_v" \
    github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
  unset OUT
}

t0=$SECONDS
if [ $# -eq 0 ]; then all; else "$@"; fi
echo "tools ready in $((SECONDS - t0))s"
