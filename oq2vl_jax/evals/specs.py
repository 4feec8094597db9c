"""The evaluator specs of a training run (`config.evals`): the schema, owned by evals so that training reads it and
evals never imports training. training/evaluators.py runs them.

`config.evals` is a tuple of spec strings, `NAME[:key=value,...]`, overridable on the command line, e.g.
`--config.evals='("demo:limit=32,every=100", "demo_attributes")'`:

  NAME      a task of `python -m oq2vl_jax.evaluate` (evals/registry.py), or "demo_attributes" (the demo config's
            held-out attribute score, demo/attributes.py; off with --config.demo.score_attributes=False)
  every     run every N steps (default: config.train.eval_every; 0 = only at the end of training)
  limit     the first N items (default 64; 0 = all)
  data      the benchmark directory (default for the demo tasks: the demo data directory, WORKDIR/demo_data, or
            with configs/demo_sft.py the SFT demo's, WORKDIR/sft_data)
  prompt    reference | chat (default reference)
  batch     items per model call (default 8)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from oq2vl_jax.errors import UserError

ATTRIBUTES = "demo_attributes"
DEFAULT_LIMIT = 64
_INT_KEYS = ("every", "limit", "batch", "seed")
_KEYS = _INT_KEYS + ("data", "prompt")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    name: str
    every: int | None = None
    limit: int = DEFAULT_LIMIT
    data: str = ""
    prompt: str = "reference"
    batch: int = 8
    seed: int = 0

    def due(self, step: int, default_every: int, last_step: int) -> bool:
        every = default_every if self.every is None else self.every
        return step == last_step or (every > 0 and step % every == 0)


def parse_spec(spec: str, field: str = "config.evals") -> EvalSpec:
    """"demo:limit=32,every=100" -> EvalSpec. Raises UserError naming the field and the bad part."""
    from oq2vl_jax.evals.registry import TASKS

    name, _, rest = str(spec).strip().partition(":")
    if name not in TASKS and name != ATTRIBUTES:
        raise UserError(f"{field}: unknown evaluator {name!r} in {spec!r}; known: {', '.join(TASKS)}, {ATTRIBUTES}")
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key not in _KEYS:
            raise UserError(f"{field}: {part!r} in {spec!r} is not KEY=VALUE with KEY one of {', '.join(_KEYS)}")
        if key in _INT_KEYS:
            try:
                values[key] = int(value)
            except ValueError:
                raise UserError(f"{field}: {key} must be an integer in {spec!r}") from None
        else:
            values[key] = value
    if values.get("prompt", "reference") not in ("reference", "chat"):
        raise UserError(f"{field}: prompt must be reference or chat in {spec!r}")
    return EvalSpec(name, **values)


def parse_specs(specs, field: str = "config.evals") -> list[EvalSpec]:
    if isinstance(specs, str):
        specs = (specs,)
    return [parse_spec(s, field) for s in specs or ()]
