#!/usr/bin/env bash
# pytest as `make test` runs it, in two runs:
#  1. the cluster tests (marked `cluster`: tests/integration) one at a time: they share the one
#     test node, and several of them time pods and the operator on it;
#  2. everything else (tests/unit, tests/workloads) spread over KUBETRAIN_TEST_WORKERS
#     processes (pytest-xdist; default 2, this machine's and CI's cores): ~10 min instead of
#     ~18 on 2 cores.
# Both runs go ahead even if the first fails; the exit code is the first failure's. With
# arguments (make test PYTEST_ARGS=...) it is one plain pytest run over what they select.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
pytest=${PYTEST:-.venv/bin/pytest}
if [ $# -gt 0 ]; then
  exec "$pytest" "$@"
fi
"$pytest" -m cluster
cluster=$?
"$pytest" -m "not cluster" -n "${KUBETRAIN_TEST_WORKERS:-2}"
rest=$?
echo "pytest: cluster tests exit $cluster, the rest exit $rest"
if [ "$cluster" != 0 ]; then exit "$cluster"; fi
exit "$rest"
