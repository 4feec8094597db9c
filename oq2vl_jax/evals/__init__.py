"""Benchmark evaluation: one module per task, a shared runner, strict and reference scorers side by side.

Layout: `kit.py` (items, requests, the model protocol, prompt styles, the task contract: Task, MultipleChoiceTask,
ShortAnswerTask, @register), `files.py` (reading the published layouts), `scorers/` (letter extraction,
MMMU/MathVista parsing, EvalAI answer normalisation), `tasks/` (one module per benchmark, found by `registry.py`),
`checkpoint_model.py` (the runner's model: a checkpoint through inference), `runner.py` (batched,
data-parallel, resumable), `report.py`, `compare.py`. The CLI is `python -m oq2vl_jax.evaluate`; docs/evaluation.md
describes the data layouts and the scoring rules.
"""
