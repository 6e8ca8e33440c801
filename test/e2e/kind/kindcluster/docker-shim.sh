#!/bin/sh
# docker, for kind, on an engine that cannot start a --privileged container
# (written by kindcluster, see test/e2e/kind/kindcluster/shim.go): a node
# gets every capability but CAP_SYS_RESOURCE, which this machine lacks,
# and the rest of what --privileged gives that a node needs: writable
# /proc/sys, every device (by cgroup rule) and the kernel log. An exec
# keeps the capabilities of its container.
real=@DOCKER@
sub=$1
case "$sub" in
run | exec) ;;
*) exec "$real" "$@" ;;
esac
for arg do
  shift
  if [ "$arg" = --privileged ]; then
    [ "$sub" = exec ] || set -- "$@" --cap-add=ALL --cap-drop=SYS_RESOURCE \
      --security-opt=systempaths=unconfined "--device-cgroup-rule=a *:* rwm" --device=/dev/kmsg
  else
    set -- "$@" "$arg"
  fi
done
exec "$real" "$@"
