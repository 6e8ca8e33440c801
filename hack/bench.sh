#!/usr/bin/env bash
# make bench: the benchmarks behind docs/benchmarks.md. The plugin
# benchmarks exec bin/meshlet-cni as a runtime does, against the real local
# cluster (booted and torn down by the e2e TestMain), in real netns.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$root/bin:$PATH"
# BenchmarkADDAgainstBaseline also builds meshlet-cni at $MESHLET_BASELINE
# (default: the plugin before issue 6) and runs both in the same run;
# BenchmarkADDFromAgent serves the agent's pod cache from its own process.
go test -run '^$' -bench . -benchmem -benchtime 200x ./iptables/ ./cmd/meshlet-cni/
# One ask of the agent's pod cache from a warm client, in process.
go test -run '^$' -bench Ask -benchmem -benchtime 2000x ./daemon/podcache/
# The webhook's mutation alone, then its AdmissionReview, in process and over HTTPS at 500/s (no
# cluster). The HTTPS one runs in its own process: a heap left by the
# in-process one would make its GC, hence its tail, look better.
go test -run '^$' -bench Mutate -benchmem -benchtime 2000x -count 3 ./webhook/
go test -run '^$' -bench 'Review$' -benchmem -benchtime 2500x -count 3 ./webhook/server/
go test -run '^$' -bench ReviewHTTPS500 -benchtime 2500x -count 3 ./webhook/server/
go test -run '^$' -bench 'Plugin|ADD' -benchtime "${BENCHTIME:-50x}" ./test/e2e/ 2>&1 | grep -v 'level=INFO'
# The node agent on the real cluster: 100 pods' readiness and deletion to
# Consul, and its memory with 110 pods and 1,000 Services (a few rounds:
# each is seconds of cluster work).
go test -run '^$' -bench 'Agent' -benchtime 3x ./test/e2e/ 2>&1 | grep -v 'level=INFO'
# meshlet proxy against Consul's built-in proxy, same run, same path.
go test -run '^$' -bench ProxyVsBuiltin -benchtime 500x ./dataplane/
# A meshed pod's start against the same pod unmeshed, same node, same run.
go test -run '^$' -bench PodStart -benchtime 20x ./test/e2e/ 2>&1 | grep -v 'level=INFO'
