#!/usr/bin/env bash
# make test: unit and netns tests, then the e2e suite on the real local
# cluster. Prints what ran and a closing "N passed, N failed, N skipped"
# line. A skipped test means a prerequisite is missing: said loudly, and
# fatal in CI, which must have everything.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
logdir="$root/bin/test-logs"
mkdir -p "$logdir"
export PATH="$root/bin:$PATH"

[ "$(id -u)" = 0 ] || echo "!!! make test is not running as root: netns and cluster tests will SKIP" >&2

unset SECURE  # the second e2e run below sets it; the first is the open cluster
rc=0
run_suite() { # run_suite NAME TIMEOUT PKG...
  local name=$1 timeout=$2 t0=$SECONDS; shift 2
  echo "==> $name"
  go test -count=1 -v -timeout "$timeout" "$@" >"$logdir/$name.log" 2>&1
  local r=$?
  grep -E '^(=== RUN|\s*--- (FAIL|SKIP)|(ok|FAIL|---)\s|panic:)' "$logdir/$name.log" | grep -v '^=== RUN' | sed 's/^/    /'
  [ $r -ne 0 ] && { echo "    $name FAILED (exit $r): full log $logdir/$name.log"; tail -40 "$logdir/$name.log" | sed 's/^/    | /'; rc=1; }
  echo "    $name: $((SECONDS - t0))s"
}

t0=$SECONDS
echo "==> lint (go mod tidy, gofmt, go vet, staticcheck)"
lint=ok
# go.mod must say what the code imports: no direct dependency marked
# "// indirect", no stale requirement. (The pinned tool modules under
# test/tools only build tools; a wrong go.mod there fails their build.)
if ! tidy=$(go mod tidy -diff 2>&1); then
  echo "    go.mod is not tidy (run: go mod tidy):"; echo "$tidy" | sed 's/^/      /'; lint=FAILED
fi
unformatted=$(gofmt -l $(git ls-files '*.go'))
[ -n "$unformatted" ] && { echo "    gofmt would change: $unformatted"; lint=FAILED; }
go vet ./... || lint=FAILED
staticcheck ./... || lint=FAILED
echo "    lint: $lint"
[ $lint = ok ] || rc=1

# The e2e packages each boot the one local cluster: never two at once (-p 1).
mapfile -t unit < <(go list ./... | grep -v '/test/e2e')
run_suite unit 20m "${unit[@]}"
# A short fuzz run of the webhook's annotation parsers on top of the seed
# corpus the unit run already replayed (longer: FUZZTIME=5m make test).
echo "==> fuzz (webhook annotations, ${FUZZTIME:-15s})"
if ! go test -run '^$' -fuzz FuzzAnnotation -fuzztime "${FUZZTIME:-15s}" ./webhook/ >"$logdir/fuzz.log" 2>&1; then
  echo "    fuzz FAILED: full log $logdir/fuzz.log (the failing input is saved under webhook/testdata/fuzz/)"
  tail -20 "$logdir/fuzz.log" | sed 's/^/    | /'; rc=1
else
  echo "    $(grep -E '^fuzz: elapsed' "$logdir/fuzz.log" | tail -1)"
fi
# TestSecureMode* need Consul with ACLs and TLS: the second run boots the
# local cluster so (SECURE=1) and runs them with the seed's walkthrough and
# the older document's (denied there: its pods run as ServiceAccount default).
# The kind packages run in their own part, below, on their own cluster.
mapfile -t e2e < <(go list ./test/e2e/... | grep -v '/test/e2e/kind')
run_suite e2e 30m -p 1 -skip '^TestSecureMode' "${e2e[@]}"
export SECURE=1
run_suite e2e-secure 20m -run '^(TestSeedWalkthrough|TestOlderDocWalkthrough|TestSecureMode)' ./test/e2e/
unset SECURE
# The kind part (docs/kind-offline.md): a kind cluster of one control plane
# and two workers on the offline node image, Consul and meshlet installed on
# it (make kind-up), the kind packages' tests, then the same cluster with the
# secure Consul (make kind-up SECURE=1) and its tests, then make kind-down. It needs a
# Docker engine: without one it is said here, and the kind tests do not run.
kind_logs=()
if docker info >/dev/null 2>&1; then
  echo "==> kind-up (make kind-up: node image, cluster, Consul, meshlet)"
  t1=$SECONDS
  if make -s kind-up >"$logdir/kind-up.log" 2>&1; then
    echo "    kind-up: $((SECONDS - t1))s"
    run_suite kind 20m -p 1 -skip '^TestKindSecure' ./test/e2e/kind/...
    kind_logs=("$logdir/kind.log")
  else
    echo "    kind-up FAILED: full log $logdir/kind-up.log"; tail -40 "$logdir/kind-up.log" | sed 's/^/    | /'; rc=1
  fi
  # The same cluster with the secure Consul (ACLs default deny, TLS only):
  # TestKindSecure* run there, and only there.
  echo "==> kind-up SECURE=1 (the same cluster, Consul with ACLs and TLS)"
  t1=$SECONDS
  if make -s kind-up SECURE=1 >"$logdir/kind-up-secure.log" 2>&1; then
    echo "    kind-up SECURE=1: $((SECONDS - t1))s"
    run_suite kind-secure 10m -run '^TestKindSecure' ./test/e2e/kind/
    kind_logs+=("$logdir/kind-secure.log")
  else
    echo "    kind-up SECURE=1 FAILED: full log $logdir/kind-up-secure.log"; tail -40 "$logdir/kind-up-secure.log" | sed 's/^/    | /'; rc=1
  fi
  make -s kind-down >"$logdir/kind-down.log" 2>&1 || { echo "    kind-down FAILED: full log $logdir/kind-down.log"; rc=1; }
else
  echo "==> kind: NOT RUN: no Docker engine answers ('docker info' failed); the kind cluster's tests need one"
  if [ "${CI:-}" = true ]; then echo "CI must run the kind part: failing."; rc=1; fi
fi

logs=("$logdir"/{unit,e2e,e2e-secure}.log "${kind_logs[@]}")
passed=$(cat "${logs[@]}" | grep -cE '^\s*--- PASS')
failed=$(cat "${logs[@]}" | grep -cE '^\s*--- FAIL')
skipped=$(cat "${logs[@]}" | grep -cE '^\s*--- SKIP')
if [ "$skipped" -gt 0 ]; then
  echo
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  echo "!!! $skipped test(s) SKIPPED — a prerequisite is missing:"
  cat "${logs[@]}" | grep -A2 -E '^\s*--- SKIP' | sed 's/^/!!!   /'
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  if [ "${CI:-}" = true ]; then echo "CI must skip nothing: failing."; rc=1; fi
fi
[ $lint = ok ] || echo "!!! lint FAILED (see above)"
echo "make test took $((SECONDS - t0))s"
echo "$passed passed, $failed failed, $skipped skipped"
exit $rc
