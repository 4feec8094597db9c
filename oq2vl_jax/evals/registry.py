"""Task names -> task objects (the names `--task` accepts)."""

from __future__ import annotations

from oq2vl_jax.errors import UserError
from oq2vl_jax.evals.kit import Task
from oq2vl_jax.evals.tasks.ai2d import AI2D
from oq2vl_jax.evals.tasks.demo import DemoVQA
from oq2vl_jax.evals.tasks.mantis import Mantis
from oq2vl_jax.evals.tasks.mathvista import MathVista
from oq2vl_jax.evals.tasks.mmbench import MMBench
from oq2vl_jax.evals.tasks.mmmu import MMMU
from oq2vl_jax.evals.tasks.mmstar import MMStar
from oq2vl_jax.evals.tasks.pope import POPE
from oq2vl_jax.evals.tasks.realworldqa import RealWorldQA
from oq2vl_jax.evals.tasks.seedbench import SEEDBench
from oq2vl_jax.evals.tasks.textvqa import TextVQA

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
