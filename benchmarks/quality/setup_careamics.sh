#!/usr/bin/env bash
# CAREamics (the N2V peer of issue 7) in its own virtual environment, so its pinned dependencies
# (torch 2.11 with CUDA wheels, exact numpy/pydantic/tifffile/lightning) never touch volden's.
# About 4 minutes and 5 GB on a 2-core CPU machine (see shared/reference/careamics-peer.md).
# Usage: bash benchmarks/quality/setup_careamics.sh   (again: does nothing once installed)
set -euo pipefail
VENV="$(cd "$(dirname "$0")" && pwd)/.venv-careamics"
VERSION="${CAREAMICS_VERSION:-0.3.5}"
if "$VENV/bin/python" -c "import careamics" 2>/dev/null; then
    echo "careamics already in $VENV"
    exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet "careamics==$VERSION"
"$VENV/bin/python" -c "import careamics; print('careamics', careamics.__version__, 'in $VENV')"
