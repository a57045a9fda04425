#!/usr/bin/env bash
# build-images.sh — build the kubetrain images without a registry and load them into the
# cluster's containerd (namespace k8s.io), so pods can use them with imagePullPolicy: IfNotPresent
# (the tags are never `latest`) or Never.
#
#   hack/build-images.sh [--force] [--variant cpu|cuda] [worker] [operator] [custom-example]
#
# Images (version from pyproject.toml):
#   kubetrain-worker:<version>      (--variant cuda: kubetrain-worker:<version>-cuda)
#   kubetrain-operator:<version>
#   kubetrain-custom-example:<version>   examples/custom-script: Python, torch, numpy and the
#                                        script, no kubetrain (not built unless named)
# An image is rebuilt when its sources changed since it was built (a hash of pyproject.toml,
# its Dockerfile and the package files it runs, kept in $STAMPS), else skipped; --force always
# rebuilds. The worker's hash leaves out kubetrain/controller/ and cli.py (only the operator runs
# them).
#
# How: the build context is prepared in a temp dir (pyproject.toml, README.md, operator/ without
# caches, and for the CPU worker the torch wheel from this machine's disk), then
#   - ../shared/localk8s/image.sh build  when that script exists (a localk8s cluster), else
#   - buildah bud --pull=never --isolation chroot -> docker-archive -> ctr -n k8s.io images import
#     (the containerd of hack/local-cluster.sh, or CONTAINERD_ADDRESS).
# The machine's CA bundle is bind-mounted during RUN steps (pip through a TLS-intercepting proxy)
# and never copied into an image.
#
# Environment (all optional):
#   BASE_IMAGE          base for both images (default: kubetrain/python-base:bookworm, created
#                       with debootstrap when missing; upstream python:3.11-slim-bookworm works
#                       where a registry is reachable — pull it with `buildah pull` first)
#   TORCH_WHEEL         CPU torch wheel to put into the worker (default: found in pip's
#                       find-links, /opt/wheels, or the pip cache; else the image installs it from
#                       the PyTorch CPU index)
#   CA_BUNDLE           CA bundle for pip inside the build (default /etc/ssl/certs/ca-certificates.crt)
#   IMAGE_SH            path of localk8s's image.sh (default ../shared/localk8s/image.sh); set it to
#                       "none" to use buildah directly
#   CONTAINERD_ADDRESS  containerd socket when image.sh is not used (default: the first that
#                       exists of local-cluster.sh's, localk8s's and /run/containerd's)
#   SOURCE_URL          value of the org.opencontainers.image.source label
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,35p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

FORCE=0 VARIANT=cpu TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --variant) VARIANT=${2:?--variant needs cpu or cuda}; shift ;;
    --variant=*) VARIANT=${1#*=} ;;
    worker|operator|custom-example) TARGETS+=("$1") ;;
    -h|--help) usage 0 ;;
    *) log "unknown argument: $1"; usage 2 ;;
  esac
  shift
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(worker operator)
case "$VARIANT" in cpu|cuda) ;; *) die "--variant must be cpu or cuda" ;; esac

[ "$(id -u)" = 0 ] || die "run as root (buildah with chroot isolation and containerd's socket need it)"
command -v buildah >/dev/null || die "buildah missing (apt-get install buildah)"

# ------------------------------------------------------------------ settings
VERSION=$(python3 -c 'import tomllib, sys; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$REPO/pyproject.toml" 2>/dev/null \
          || sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -n1)
[ -n "$VERSION" ] || die "no version in pyproject.toml"
REVISION=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ "$REVISION" != unknown ] && [ -n "$(git -C "$REPO" status --porcelain 2>/dev/null)" ] && REVISION="$REVISION-dirty"
SOURCE_URL=${SOURCE_URL:-$(git -C "$REPO" remote get-url origin 2>/dev/null || echo https://github.com/kubetrain/kubetrain)}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
IMAGE_SH=${IMAGE_SH:-$REPO/../shared/localk8s/image.sh}
[ "$IMAGE_SH" != none ] && [ -f "$IMAGE_SH" ] || IMAGE_SH=
DEFAULT_BASE=kubetrain/python-base:bookworm
BASE_IMAGE=${BASE_IMAGE:-$DEFAULT_BASE}
ARCHIVES=${ARCHIVES:-/var/cache/kubetrain/images}   # docker-archives when image.sh is not used
STAMPS=${STAMPS:-/var/cache/kubetrain/stamps}        # source hash of each image last built here

if [ -z "$IMAGE_SH" ]; then
  if [ -z "${CONTAINERD_ADDRESS:-}" ]; then
    for s in /run/kubetrain-cluster/containerd/containerd.sock /run/localk8s/containerd/containerd.sock \
             /run/containerd/containerd.sock; do
      [ -S "$s" ] && { CONTAINERD_ADDRESS=$s; break; }
    done
  fi
  [ -S "${CONTAINERD_ADDRESS:-}" ] || die "no containerd socket found (start a cluster: hack/local-cluster.sh up; or set CONTAINERD_ADDRESS)"
fi
ctr_k8s() { ctr --address "$CONTAINERD_ADDRESS" --namespace k8s.io "$@"; }

cluster_images() {  # image references containerd knows, one a line
  if [ -n "$IMAGE_SH" ]; then bash "$IMAGE_SH" list; else ctr_k8s images ls -q; fi
}
have_cluster_image() {  # NAME:TAG -> containerd stores docker.io/library/NAME:TAG
  cluster_images | grep -Fx -e "docker.io/library/$1" -e "$1" >/dev/null
}
have_local_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# ------------------------------------------------------------------ base image
# A Debian bookworm minbase with python3 (3.11, matching the cp311 torch wheel), venv, pip, passwd.
ensure_base() {
  have_local_image "$BASE_IMAGE" && return 0
  [ "$BASE_IMAGE" = "$DEFAULT_BASE" ] || die "base image $BASE_IMAGE not in buildah's storage (buildah pull it, or leave BASE_IMAGE unset)"
  local t0=$SECONDS
  log "creating base image $BASE_IMAGE (debootstrap bookworm + python3)"
  if [ -n "$IMAGE_SH" ]; then
    bash "$IMAGE_SH" debian "$BASE_IMAGE" python3,python3-venv,python3-pip,passwd
  else
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >/dev/null
    local mirror work c
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    work=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,passwd bookworm "$work/rootfs" \
      ${mirror:+"$mirror"} > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; rm -rf "$work"; die "debootstrap failed"; }
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
    c=$(buildah from --quiet scratch)
    buildah copy --quiet "$c" "$work/rootfs/" / >/dev/null
    buildah config --os linux --arch amd64 --cmd '["/bin/bash"]' \
      --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
    buildah commit --quiet --rm "$c" "$BASE_IMAGE" >/dev/null
    rm -rf "$work"
  fi
  log "base image $BASE_IMAGE ready in $((SECONDS - t0))s"
}

# ------------------------------------------------------------------ build context
find_torch_wheel() {
  [ -n "${TORCH_WHEEL:-}" ] && { [ -f "$TORCH_WHEEL" ] || die "TORCH_WHEEL=$TORCH_WHEEL missing"; echo "$TORCH_WHEEL"; return; }
  local dirs=() d f
  # pip's configured find-links (may hold several, space separated), then the usual places
  for d in $(pip3 config get global.find-links 2>/dev/null || true) ${PIP_FIND_LINKS:-} /opt/wheels; do dirs+=("${d#file://}"); done
  for d in "${dirs[@]}"; do
    [ -d "$d" ] || continue
    for f in "$d"/torch-2.13.0+cpu-cp311-*.whl "$d"/torch-2.13.0-cp311-*.whl; do
      [ -f "$f" ] && { echo "$f"; return; }
    done
  done
  f=$(find /root/.cache/pip "${HOME:-/root}/.cache/pip" -name 'torch-2.13.0*cp311*.whl' 2>/dev/null | head -n1 || true)
  echo "$f"
}

make_context() {  # make_context DIR WITH_WHEEL(0|1)
  local ctx=$1 wheel
  cp "$REPO/pyproject.toml" "$REPO/README.md" "$ctx/"
  tar -C "$REPO" --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' \
      --exclude='.mypy_cache' --exclude='.pytest_cache' --exclude='.ruff_cache' -cf - operator | tar -C "$ctx" -xf -
  if [ "$2" = 1 ]; then
    wheel=$(find_torch_wheel)
    if [ -n "$wheel" ]; then
      mkdir -p "$ctx/wheels"
      # a hard link when on the same filesystem (no 190 MB copy), else a copy
      ln "$wheel" "$ctx/wheels/" 2>/dev/null || cp "$wheel" "$ctx/wheels/"
      log "torch wheel: $wheel"
    else
      log "no local torch 2.13.0 wheel found: the image installs torch from the PyTorch CPU index"
    fi
  fi
}

# ------------------------------------------------------------------ build + load
source_hash() {  # source_hash worker|operator|custom-example -> sha256 of what goes into it
  local what=$1 skip=()
  if [ "$what" = custom-example ]; then  # its folder (its base: the local Debian image)
    (cd "$REPO/examples/custom-script" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) \
      | sha256sum | cut -c1-16
    return
  fi
  # the worker's pods run `python -m kubetrain.workloads.*`, never the operator or its CLI
  [ "$what" = worker ] && skip=(! -path 'operator/kubetrain/controller/*' ! -path 'operator/kubetrain/cli.py')
  (
    cd "$REPO"
    find pyproject.toml "images/$what/Dockerfile" operator -type f \
         ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info*' "${skip[@]}" -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum
  ) | sha256sum | cut -c1-16
}

build_one() {  # build_one worker|operator
  local what=$1 name tag ctx t0 args hash stamp wheel
  tag=$VERSION; [ "$what" = worker ] && [ "$VARIANT" = cuda ] && tag="$VERSION-cuda"
  name=kubetrain-$what:$tag
  hash=$(source_hash "$what")
  stamp="$STAMPS/$(echo "$name" | tr '/:@' '___')"
  if [ "$FORCE" = 0 ] && have_cluster_image "$name"; then
    if [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
      log "$name already in the cluster's containerd, built from these sources: skipped"
      return 0
    elif [ -f "$stamp" ]; then
      log "$name is in containerd but its sources changed: rebuilding"
    else
      log "$name is in containerd, built from unknown sources (no stamp in $STAMPS): rebuilding"
    fi
  fi
  ensure_base
  ctx=$(mktemp -d /tmp/kubetrain-build.XXXXXX)
  CONTEXTS+=("$ctx")
  if [ "$what" = custom-example ]; then
    cp -r "$REPO/examples/custom-script/." "$ctx/"
    wheel=$(find_torch_wheel)
    if [ -n "$wheel" ]; then mkdir -p "$ctx/wheels"; ln "$wheel" "$ctx/wheels/" 2>/dev/null || cp "$wheel" "$ctx/wheels/"; fi
    args=(-f "$ctx/Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE")
  else
  make_context "$ctx" "$([ "$what" = worker ] && [ "$VARIANT" = cpu ] && echo 1 || echo 0)"
  args=(-f "$REPO/images/$what/Dockerfile"
        --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$VERSION"
        --build-arg "REVISION=$REVISION" --build-arg "SOURCE_URL=$SOURCE_URL")
  [ "$what" = worker ] && args+=(--build-arg "VARIANT=$VARIANT")
  fi
  if [ -f "$CA_BUNDLE" ]; then
    args+=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro"
           --build-arg "PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
  fi
  log "building $name (base $BASE_IMAGE, revision $REVISION)"
  t0=$SECONDS
  if [ -n "$IMAGE_SH" ]; then
    bash "$IMAGE_SH" build "$ctx" "$name" "${args[@]}"
  else
    local id tar
    id=$(buildah bud --quiet --pull=never --isolation chroot --layers=false -t "$name" "${args[@]}" "$ctx" | tail -n1)
    mkdir -p "$ARCHIVES"
    tar="$ARCHIVES/$(echo "$name" | tr '/:@' '___').tar"
    rm -f "$tar"
    buildah push --quiet "$id" "docker-archive:$tar:$name"
    ctr_k8s images import "$tar" >&2
  fi
  rm -rf "$ctx"
  mkdir -p "$STAMPS" && echo "$hash" > "$stamp"
  local secs=$((SECONDS - t0)) size
  size=$(buildah images --format '{{.Size}}' "$name" 2>/dev/null | head -n1 || true)
  echo "$name: built and loaded in ${secs}s; image size ${size:-?} (uncompressed layers)"
}

CONTEXTS=()
cleanup() { [ ${#CONTEXTS[@]} -eq 0 ] || rm -rf "${CONTEXTS[@]}"; }
trap cleanup EXIT
T0=$SECONDS
for t in "${TARGETS[@]}"; do build_one "$t"; done
# Each rebuild leaves the previous image untagged in buildah's storage (2.5 GB for the worker);
# enough of them push the disk over the kubelet's image-GC threshold (85 %), and it then
# deletes the cluster's kubetrain images (ErrImageNeverPull in the tests).
buildah rmi --prune >/dev/null 2>&1 || true
log "done in $((SECONDS - T0))s"
