"""UCE benchmark (issue 3): the fast solver against the naive per-layer reference, end to end
through ComfyUI, and batched text encoding. Entry point: ``bench/run.py`` (or ``bench/run.sh``).

Loaded by run.py as the package ``uce_bench`` from this folder; the repository root never goes on
sys.path (its ``nodes/`` package would shadow ComfyUI's ``nodes`` module).
"""
