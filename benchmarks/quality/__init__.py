"""Issue 7's image-quality comparison: volden against its peers on the same volumes and budget.

``python -m benchmarks.quality`` (from the repository root) makes the volumes, runs raw,
calibrated Gaussian, BM4D, CAREamics N2V 3D, volden and volden's network trained as
Noise2Truth on each, scores them against the clean volume and prints (or, with ``--section``,
writes into BENCHMARKS.md) the table. CAREamics lives in its own environment:
``bash benchmarks/quality/setup_careamics.sh`` first.
"""
