#!/bin/sh
# Stands in for Envoy, which cannot run on these machines, in data plane
# envoy's pods on the local cluster (EnvoyStandInImage). It checks what
# only the container itself can: that the file its login sidecar wrote,
# where the webhook's -c points, is there and readable by Envoy's UID. It
# serves, as Envoy's admin listener does on the pod's loopback, a page
# Envoy wrote at /stats/prometheus (dataplane/testdata/envoy-stats-prometheus.txt,
# a recording; /envoy-admin in the image), for the pod's metrics-merging
# sidecar to read. It then holds the proxy's public port, so that the
# startup probe passes and the pod starts. The bootstrap itself is checked
# by the tests against Envoy's schema and Consul's xDS
# (TestSecureModeEnvoyDataPlane).
if [ "$1" = -c ]; then
  if [ ! -r "$2" ] || [ ! -s "$2" ]; then
    echo "envoy stand-in: $2 is missing, empty or unreadable by uid $(id -u)" >&2
    exit 1
  fi
  echo "envoy stand-in: $2 is readable by uid $(id -u)"
fi
# Without -f, httpd goes to the background once it listens.
httpd -p 127.0.0.1:19000 -h /envoy-admin || exit 1
exec httpd -f -p 20000 -h /tmp
