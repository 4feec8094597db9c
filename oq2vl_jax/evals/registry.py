"""Task names -> task objects (the names `--task` accepts)."""

from __future__ import annotations

from oq2vl_jax.errors import UserError
from oq2vl_jax.evals.ai2d import AI2D
from oq2vl_jax.evals.demo import DemoVQA
from oq2vl_jax.evals.mantis import Mantis
from oq2vl_jax.evals.mathvista import MathVista
from oq2vl_jax.evals.mmbench import MMBench
from oq2vl_jax.evals.mmmu import MMMU
from oq2vl_jax.evals.mmstar import MMStar
from oq2vl_jax.evals.pope import POPE
from oq2vl_jax.evals.realworldqa import RealWorldQA
from oq2vl_jax.evals.seedbench import SEEDBench
from oq2vl_jax.evals.task import Task
from oq2vl_jax.evals.textvqa import TextVQA

TASKS: dict[str, type[Task]] = {t.name: t for t in (MMMU, MMBench, SEEDBench, MMStar, AI2D, TextVQA, MathVista, POPE,
                                                     Mantis, RealWorldQA, DemoVQA)}


def get_tasks(spec: str) -> list[Task]:
    """"mmmu,pope" -> task objects, in the given order; an unknown name is a UserError listing the known ones."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UserError(f"--task: give one or more of {', '.join(TASKS)}")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise UserError(f"--task: unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    return [TASKS[n]() for n in dict.fromkeys(names)]
