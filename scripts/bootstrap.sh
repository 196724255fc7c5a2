#!/usr/bin/env bash
# Creates (or reuses) the project-local virtual environment and installs d2kd into it.
#
#   scripts/bootstrap.sh            # venv in ./.venv (override with D2KD_VENV=...)
#
# Steps, each skipped when already satisfied, so a second run takes seconds:
#   1. python -m venv
#   2. torch 2.14.1 + torchvision 0.29.1
#   3. detectron2: the venv's own, else one importable by the invoking python3 (a user's
#      source build, linked in through a .pth file), else the registry's sal-detectron2 wheel
#      (see ../shared/ENVIRONMENT.md for why that one and how)
#   4. the other run-time and test dependencies
#   5. d2kd itself, editable, compiling d2kd._C against the installed torch
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${D2KD_VENV:-$ROOT/.venv}"
BASE_PY="${PYTHON:-python3}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
log() { printf '[bootstrap] %s\n' "$*" >&2; }

if [[ ! -x "$PY" ]]; then
  log "creating virtual environment at $VENV"
  "$BASE_PY" -m venv "$VENV"
fi
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

have_version() {  # have_version DIST VERSION
  "$PY" - "$1" "$2" <<'PYEOF'
import sys
from importlib import metadata
try:
    v = metadata.version(sys.argv[1])
except metadata.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if v.split("+")[0] == sys.argv[2] else 1)
PYEOF
}

if ! have_version torch "$TORCH_VERSION" || ! have_version torchvision "$TORCHVISION_VERSION"; then
  log "installing torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION (a few minutes on a fresh machine)"
  "${PIP[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# Run-time dependencies of detectron2 (its wheel is installed with --no-deps) and of d2kd.
DEPS=(fvcore iopath pycocotools "omegaconf>=2.1,<2.4" hydra-core termcolor yacs tabulate
      cloudpickle tqdm matplotlib Pillow "setuptools<81" wheel ninja scipy submitit
      tensorboard pytest pytest-xdist hypothesis
      "transformers>=5,<6" safetensors)  # transformers: Hugging Face teachers (d2kd.convert)
DEPS_STAMP="$VENV/.d2kd-deps-$(printf '%s\n' "${DEPS[@]}" | md5sum | cut -c1-12)"
if [[ ! -f "$DEPS_STAMP" ]]; then
  log "installing dependencies: ${DEPS[*]}"
  "${PIP[@]}" "${DEPS[@]}"
  touch "$DEPS_STAMP"
fi

if ! "$PY" -c 'import detectron2' 2>/dev/null; then
  EXTERNAL="$("$BASE_PY" -c 'import detectron2, os; print(os.path.dirname(os.path.dirname(os.path.abspath(detectron2.__file__))))' 2>/dev/null || true)"
  if [[ -n "$EXTERNAL" ]]; then
    log "using the detectron2 already importable by $BASE_PY, from $EXTERNAL"
    echo "$EXTERNAL" > "$SITE/d2kd_external_detectron2.pth"
  else
    log "installing detectron2 from the registry's sal-detectron2 0.7.2 wheel (upstream source a59f0563)"
    "${PIP[@]}" --no-deps --only-binary=:all: --python-version 3.10 --target "$SITE" sal-detectron2==0.7.2
    rm -rf "$SITE/tools"   # the wheel ships a stray top-level package of that name
  fi
  "$PY" -c 'import detectron2' || { log "detectron2 still does not import"; exit 1; }
fi

# Rebuild d2kd._C when a source or the build script changed since the last build.
BUILD_HASH="$(cat "$ROOT/setup.py" $(find "$ROOT/csrc" -type f | sort) 2>/dev/null | md5sum | cut -c1-16)"
BUILD_STAMP="$VENV/.d2kd-build-$BUILD_HASH"
if [[ ! -f "$BUILD_STAMP" ]] || ! "$PY" -c 'import torch, d2kd._C' 2>/dev/null; then  # _C needs torch's libs loaded
  log "building d2kd and its extension d2kd._C"
  rm -f "$VENV"/.d2kd-build-*
  (cd "$ROOT" && "$PY" -m pip install --quiet --no-build-isolation --no-deps -e .)
  touch "$BUILD_STAMP"
fi
log "ready: $PY"
