"""Benchmark evaluation: one module per task, a shared runner, strict and reference scorers side by side.

Layout: `api.py` (items, requests, the model protocol), `files.py` (reading the published layouts), scorer libraries
(`choice.py` letter extraction, `mmmu_parse.py` MMMU/MathVista parsing, `vqa_norm.py` EvalAI answer normalisation),
`prompts.py` (reference prompts of the original harness and the SFT chat template), one module per task, `registry.py`,
`runner.py` (batched, data-parallel, resumable), `report.py`, `compare.py`. The CLI is `python -m oq2vl_jax.evaluate`;
docs/evaluation.md describes the data layouts and the scoring rules.
"""
