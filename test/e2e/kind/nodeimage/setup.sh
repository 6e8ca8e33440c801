#!/bin/bash
# Runs once in the node image's build container (node.go), which then is
# committed: enables the node's services and imports the pod images into
# containerd's store, then removes itself and the images' archive.
set -euo pipefail

# A node boots containerd and, once kubeadm configured it, the kubelet;
# nothing asks for a login prompt or the host's binfmt handlers.
systemctl enable containerd.service kubelet.service
systemctl mask getty.target console-getty.service systemd-binfmt.service dpkg-db-backup.timer
mkdir -p /etc/kubernetes/manifests /etc/cni/net.d

# containerd with its defaults (this container cannot run the CRI plugin)
# just to fill /var/lib/containerd. The images stay packed: containerd
# unpacks each on its first use in a node.
echo 'version = 2' >/tmp/containerd.toml
containerd --config /tmp/containerd.toml >/tmp/containerd.log 2>&1 &
pid=$!
for _ in $(seq 100); do
  ctr version >/dev/null 2>&1 && break
  sleep 0.1
done
ctr --namespace k8s.io images import --no-unpack /kind/images.tar
ctr --namespace k8s.io images ls --quiet
kill "$pid"
wait "$pid" || true
rm -f /kind/images.tar /kind/setup.sh
