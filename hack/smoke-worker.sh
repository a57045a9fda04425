#!/usr/bin/env bash
# smoke-worker.sh — end-to-end check of the worker image on a real cluster: one pod runs the
# training work unit on a tiny digits MLP (2 epochs) from a ConfigMap, as a non-root user with
# every capability dropped and a read-only root filesystem, and writes its JSON result (<= 4 KB)
# to /dev/termination-log.  The script prints that termination message and removes the pod and the
# ConfigMap afterwards.
#
#   hack/smoke-worker.sh [IMAGE]      default IMAGE: kubetrain-worker:<version from pyproject.toml>
#
# Needs the image in the node's containerd (hack/build-images.sh) and a cluster through
# $KUBECONFIG (else the one `hack/local-cluster.sh env` reports).  NAMESPACE (default: default),
# TIMEOUT (seconds, default 300).  Exit 0 only when the pod succeeded with status "succeeded".
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if ! { command -v kubectl >/dev/null && [ -n "${KUBECONFIG:-}" ]; }; then
  eval "$(bash "$REPO/hack/local-cluster.sh" env)"
fi
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -n1)
IMAGE=${1:-kubetrain-worker:$VERSION}
NS=${NAMESPACE:-default}
TIMEOUT=${TIMEOUT:-300}
NAME=kubetrain-smoke-worker-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
k() { kubectl -n "$NS" "$@"; }

cleanup() {
  k delete pod "$NAME" --ignore-not-found --grace-period=0 --wait=false >/dev/null 2>&1 || true
  k delete configmap "$NAME" --ignore-not-found >/dev/null 2>&1 || true
  log "removed pod and configmap $NAME"
}
trap cleanup EXIT

k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: $NAME
  labels: {app.kubernetes.io/name: kubetrain, app.kubernetes.io/component: smoke}
data:
  job.yaml: |
    apiVersion: kubetrain.io/v1alpha1
    kind: TrainingJob
    metadata:
      name: smoke-digits-mlp
    spec:
      dataset: {builtin: digits, validationSplit: 0.2, testSplit: 0.1, seed: 0}
      model: {builtin: mlp, params: {hiddenUnits: [32]}}
      training: {epochs: 2, batchSize: 64, learningRate: 0.01}
---
apiVersion: v1
kind: Pod
metadata:
  name: $NAME
  labels: {app.kubernetes.io/name: kubetrain, app.kubernetes.io/component: smoke}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 1000
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: train
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [python, -m, kubetrain.workloads.train, --job, /job/job.yaml, --storage, /tmp/s,
              --result, /dev/termination-log]
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
    resources:
      requests: {cpu: 500m, memory: 512Mi}
      limits: {cpu: "1", memory: 2Gi}
    volumeMounts:
    - {name: job, mountPath: /job, readOnly: true}
    - {name: tmp, mountPath: /tmp}
  volumes:
  - name: job
    configMap: {name: $NAME}
  - name: tmp
    emptyDir: {}
EOF
log "pod $NAME ($IMAGE) created in namespace $NS"

t0=$SECONDS phase=
while [ $((SECONDS - t0)) -lt "$TIMEOUT" ]; do
  phase=$(k get pod "$NAME" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  case "$phase" in Succeeded|Failed) break ;; esac
  sleep 2
done
log "pod phase: ${phase:-unknown} after $((SECONDS - t0))s"

message=$(k get pod "$NAME" -o jsonpath='{.status.containerStatuses[0].state.terminated.message}' 2>/dev/null || true)
if [ "$phase" != Succeeded ] || [ -z "$message" ]; then
  k describe pod "$NAME" | tail -n 20 >&2 || true
  k logs "$NAME" --tail=30 >&2 || true
  log "FAIL: pod did not succeed with a termination message"
  exit 1
fi
echo "termination message (${#message} bytes):"
printf '%s\n' "$message" | python3 -m json.tool 2>/dev/null || printf '%s\n' "$message"
if printf '%s' "$message" | grep -q '"status": *"succeeded"'; then
  log "PASS: worker image trained the digits MLP as uid 1000 with no capabilities"
else
  log "FAIL: result status is not succeeded"
  exit 1
fi
