#!/bin/sh
# install-cni: put the pycni CNI plugin and its network config on the host (init container).
#
# kubelet runs /opt/cni/bin/pycni on the *host*, where no suitable Python can be assumed (kind's
# node image has none). So we copy this image's Python runtime (/usr/local: the interpreter, the
# stdlib and pycni's site-packages) to /opt/pycni/runtime-<stamp> on the host and switch the
# /opt/pycni/runtime symlink to it atomically. The plugin is pycni's stdlib-only CNI front
# (pycni/cni/front.py, rendered by pycni.cni.install for these paths) at /opt/pycni/front.py, and
# /opt/cni/bin/pycni is a two-line sh wrapper that points the loader at the runtime's libpython
# and execs it. The front hands requests to the node agent's socket (/run/pycni/cni.sock) or
# falls back to the in-process plugin with the same runtime. kind's node image and
# python:3.11-slim are both Debian bookworm, so the glibc matches.
#
# Every file lands by rename(2) in its own directory: kubelet never sees a half-written plugin or
# conflist. __ETCD_ENDPOINTS__ and __KUBERNETES_NODE_NAME__ in the conflist are substituted, as
# Calico's installer does. Paths are overridable, so tests run it against a temp dir.
set -eu

HOST_CNI_BIN_DIR=${HOST_CNI_BIN_DIR:-/host/opt/cni/bin}
HOST_CNI_NET_DIR=${HOST_CNI_NET_DIR:-/host/etc/cni/net.d}
HOST_PYCNI_DIR=${HOST_PYCNI_DIR:-/host/opt/pycni}
# where HOST_PYCNI_DIR is seen from the host (the wrapper runs there)
PYCNI_HOST_PATH=${PYCNI_HOST_PATH:-/opt/pycni}
PYCNI_RUNTIME_SRC=${PYCNI_RUNTIME_SRC:-/usr/local}
PYCNI_PYTHON=${PYCNI_PYTHON:-bin/python3}
# the interpreter (with pycni importable) that renders the front here, in the container
BUILD_PYTHON=${BUILD_PYTHON:-python3}
AGENT_SOCKET=${AGENT_SOCKET:-/run/pycni/cni.sock}
PLUGIN_NAME=${PLUGIN_NAME:-pycni}
CNI_CONF_NAME=${CNI_CONF_NAME:-10-pycni.conflist}
ETCD_ENDPOINTS=${ETCD_ENDPOINTS:-}
KUBERNETES_NODE_NAME=${KUBERNETES_NODE_NAME:-$(hostname)}

if [ -z "${CNI_CONFLIST_SRC:-}" ] || [ ! -r "$CNI_CONFLIST_SRC" ]; then
    echo "install-cni: CNI_CONFLIST_SRC must name a readable conflist (got '${CNI_CONFLIST_SRC:-}')" >&2
    exit 1
fi

log() { echo "install-cni: $*"; }

mkdir -p "$HOST_CNI_BIN_DIR" "$HOST_CNI_NET_DIR" "$HOST_PYCNI_DIR"

# 1. the Python runtime (skipped with PYCNI_RUNTIME_SRC=none, for hosts that bring their own)
if [ "$PYCNI_RUNTIME_SRC" != "none" ]; then
    stamp=$(date +%s)-$$
    new="runtime-$stamp"
    cp -a "$PYCNI_RUNTIME_SRC/." "$HOST_PYCNI_DIR/$new/"
    ln -sfn "$new" "$HOST_PYCNI_DIR/.runtime.tmp"
    mv -T "$HOST_PYCNI_DIR/.runtime.tmp" "$HOST_PYCNI_DIR/runtime"
    for old in "$HOST_PYCNI_DIR"/runtime-*; do
        [ "$old" = "$HOST_PYCNI_DIR/$new" ] || rm -rf "$old"
    done
    log "runtime installed in $PYCNI_HOST_PATH/$new"
fi

# 2. the plugin: the CNI front, and the wrapper kubelet runs
RT="$PYCNI_HOST_PATH/runtime"
tmp="$HOST_PYCNI_DIR/.front.py.tmp"
"$BUILD_PYTHON" -c '
import sys
from pycni.cni.install import render
sys.stdout.write(render(fallback_python=sys.argv[1], shebang_python=sys.argv[1], default_socket=sys.argv[2]))
' "$RT/$PYCNI_PYTHON" "$AGENT_SOCKET" > "$tmp"
mv -f "$tmp" "$HOST_PYCNI_DIR/front.py"

tmp="$HOST_CNI_BIN_DIR/.$PLUGIN_NAME.tmp"
cat > "$tmp" <<WRAPPER
#!/bin/sh
# installed by pycni install-cni: the pycni CNI plugin (front: $PYCNI_HOST_PATH/front.py)
LD_LIBRARY_PATH="$RT/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$RT/$PYCNI_PYTHON" -IS "$PYCNI_HOST_PATH/front.py" "\$@"
WRAPPER
chmod 0755 "$tmp"
mv -f "$tmp" "$HOST_CNI_BIN_DIR/$PLUGIN_NAME"
log "plugin installed as $HOST_CNI_BIN_DIR/$PLUGIN_NAME"

# 3. the network config
tmp="$HOST_CNI_NET_DIR/.$CNI_CONF_NAME.tmp"
sed -e "s|__ETCD_ENDPOINTS__|$ETCD_ENDPOINTS|g" \
    -e "s|__KUBERNETES_NODE_NAME__|$KUBERNETES_NODE_NAME|g" \
    "$CNI_CONFLIST_SRC" > "$tmp"
if command -v python3 >/dev/null 2>&1 && ! python3 -m json.tool "$tmp" >/dev/null; then
    rm -f "$tmp"
    echo "install-cni: $CNI_CONFLIST_SRC is not valid JSON after substitution" >&2
    exit 1
fi
chmod 0644 "$tmp"
mv -f "$tmp" "$HOST_CNI_NET_DIR/$CNI_CONF_NAME"
log "network config written to $HOST_CNI_NET_DIR/$CNI_CONF_NAME"
