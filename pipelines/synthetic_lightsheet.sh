#!/usr/bin/env bash
# A whole volden run with the CLI, as a workflow would chain it:
# synthetic acquisition -> train (self-supervised) -> blocked apply on a local Dask cluster.
# Usage: pipelines/synthetic_lightsheet.sh [WORKDIR] [MINUTES]
set -euo pipefail
work=${1:-volden-pipeline}
minutes=${2:-3}
mkdir -p "$work"
volden synth "$work/acquisition.zarr" --kind mixed --shape 64,256,256 --photons 20 --overwrite
volden train "$work/acquisition.zarr" -o "$work/model" --minutes "$minutes" --overwrite
volden apply "$work/model" "$work/acquisition.zarr" "$work/denoised.zarr" --overwrite
echo "denoised OME-Zarr: $work/denoised.zarr (loss curve: $work/model/loss.png)"
