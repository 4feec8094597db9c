"""Task names -> task classes (the names `--task` and `config.evals` accept): every module of evals/tasks/ is imported
and its `@register`ed classes (evals/kit.py) are the tasks; adding a benchmark is adding a module there."""

from __future__ import annotations

import importlib
import pkgutil

from oq2vl_jax.errors import UserError
from oq2vl_jax.evals import kit, tasks as tasks_package


def discover() -> dict[str, type[kit.Task]]:
    """Imports every module of evals/tasks/ (in name order); returns the registered tasks by name."""
    for module in sorted(m.name for m in pkgutil.iter_modules(tasks_package.__path__)):
        importlib.import_module(f"{tasks_package.__name__}.{module}")
    return dict(sorted(kit.TASKS.items()))


TASKS: dict[str, type[kit.Task]] = discover()


def get_tasks(spec: str) -> list[kit.Task]:
    """"mmmu,pope" -> task objects, in the given order; an unknown name is a UserError listing the known ones."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UserError(f"--task: give one or more of {', '.join(TASKS)}")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise UserError(f"--task: unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    return [TASKS[n]() for n in dict.fromkeys(names)]
