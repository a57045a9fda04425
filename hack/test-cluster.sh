#!/usr/bin/env bash
# test-cluster.sh — what `make test` does before pytest so that the cluster tests can run: the
# machine's test cluster and, in it, the worker and operator images.
#
#   hack/test-cluster.sh
#
# With KUBECONFIG unset (or naming the cluster `hack/local-cluster.sh env` reports):
#   1. hack/local-cluster.sh up: starts the project's single-node cluster, or only reports one
#      already reachable (e.g. ../shared/localk8s's, through /var/lib/localk8s/env);
#   2. hack/build-images.sh worker operator: builds an image that is missing, or whose sources
#      changed since it was built here (a hash of pyproject.toml, its Dockerfile and the package,
#      kept in /var/cache/kubetrain/stamps); when both are current it only hashes the sources and
#      lists containerd's images, and skips them.
# With KUBECONFIG naming another cluster: nothing; that cluster must have the images already
# (see "Tests" in README.md).
#
# Logs: /tmp/kubetrain-cluster.log, /tmp/kubetrain-images.log. When the cluster or the images
# cannot be had it says why and exits 0: the cluster tests then skip with the reason. With
# KUBETRAIN_REQUIRE_CLUSTER=1 (set by .ci/run on CI machines that have a cluster) it exits 1.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
CLUSTER_LOG=${CLUSTER_LOG:-/tmp/kubetrain-cluster.log}
IMAGES_LOG=${IMAGES_LOG:-/tmp/kubetrain-images.log}
REQUIRE=${KUBETRAIN_REQUIRE_CLUSTER:-0}
[ "$REQUIRE" = 0 ] && REQUIRE=

give_up() {  # give_up MESSAGE LOG
  if [ -n "$REQUIRE" ]; then
    echo "ERROR: $1 (log: $2); KUBETRAIN_REQUIRE_CLUSTER=$REQUIRE, so this fails the tests" >&2
    [ -f "$2" ] && tail -n 20 "$2" | sed 's/^/    /' >&2
    exit 1
  fi
  echo "$1 (log: $2); the cluster tests that cannot run will skip and say why" >&2
  exit 0
}

local_kubeconfig() {  # the KUBECONFIG of the machine's own cluster, if any
  env -u KUBECONFIG bash hack/local-cluster.sh env 2>/dev/null | sed -n 's/^export KUBECONFIG=//p' | tail -n1
}

if [ -n "${KUBECONFIG:-}" ] && [ "$KUBECONFIG" != "$(local_kubeconfig)" ]; then
  echo "KUBECONFIG=$KUBECONFIG: using that cluster as it is; it needs the kubetrain images" \
       "(README.md, \"Tests\")" >&2
  exit 0
fi

bash hack/local-cluster.sh up >"$CLUSTER_LOG" 2>&1 \
  || give_up "no local Kubernetes cluster: hack/local-cluster.sh up failed" "$CLUSTER_LOG"
exports=$(env -u KUBECONFIG bash hack/local-cluster.sh env 2>>"$CLUSTER_LOG") \
  || give_up "no local Kubernetes cluster: hack/local-cluster.sh env found none" "$CLUSTER_LOG"
eval "$exports"
kubectl --request-timeout=10s get --raw /readyz >>"$CLUSTER_LOG" 2>&1 \
  || give_up "the local Kubernetes cluster does not answer (kubectl get --raw /readyz)" "$CLUSTER_LOG"

t0=$SECONDS
bash hack/build-images.sh worker operator custom-example >"$IMAGES_LOG" 2>&1 \
  || give_up "hack/build-images.sh worker operator custom-example failed: the images may be missing or stale" \
             "$IMAGES_LOG"
grep -E "skipped|rebuilding|built and loaded" "$IMAGES_LOG" | sed 's/^\[[0-9:]*\] //' >&2
echo "images ready in $((SECONDS - t0))s" >&2
