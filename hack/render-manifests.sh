#!/usr/bin/env bash
# render-manifests.sh — the plain manifests (manifests/kubetrain.yaml), rendered from the Helm
# chart with its default values, printed to stdout. `make manifests` writes the file;
# tests/unit/test_chart.py fails when the file and this output differ.
#
# One file, in the order `kubectl apply -f` needs: the CRD, the kubetrain-system Namespace, then
# the operator (ServiceAccount, ConfigMap, RBAC, Service, Deployment). Left out: the Helm hooks
# (the `helm test` check and the pre-delete cleanup), which only Helm runs. Labels say the objects
# are managed by kubectl, not Helm.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NAMESPACE=kubetrain-system
command -v helm >/dev/null || { echo "render-manifests.sh: helm not found on PATH" >&2; exit 1; }

cat <<HEADER
# kubetrain: the operator, installed with \`kubectl apply -f manifests/\` (generated from
# charts/kubetrain with its default values by \`make manifests\`; do not edit).
# Uninstall: \`kubectl delete trainingjobs --all -A\` while the operator runs, then
# \`kubectl delete -f manifests/\`.
HEADER
for crd in "$REPO"/charts/kubetrain/crds/*.yaml; do
  echo "---"
  grep -v '^---$' "$crd"
done
cat <<NS
---
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
  labels:
    app.kubernetes.io/name: kubetrain
    app.kubernetes.io/part-of: kubetrain
NS
helm template kubetrain "$REPO/charts/kubetrain" --namespace "$NAMESPACE" --no-hooks \
    --set tests.enabled=false \
  | sed -e 's/app.kubernetes.io\/managed-by: Helm/app.kubernetes.io\/managed-by: kubectl/' \
        -e '/^  *helm.sh\/chart: /d' \
        -e '/^# Source: /d'
