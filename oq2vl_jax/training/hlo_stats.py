"""What a compiled program does, read from its optimized HLO text (`compiled.as_text()`), with loop trip counts.

`compiled.cost_analysis()` counts the body of every while loop once (a 28-layer scan counts as one layer) and returns
nothing for a GPU target compiled without a device, so the numbers that matter for planning are read here instead:

  flops        matmul FLOPs: dot and convolution (2 per multiply-add), cuBLAS gemm custom calls (their dot
               dimension numbers), cuDNN fused attention (4 B H T S D forward, 10 backward with the recomputation;
               halved for a causal mask) and Pallas/Mosaic kernels that declare a cost estimate.
  hbm_bytes    an estimate of memory traffic: operands + results of every instruction outside fusions (a fusion reads
               its inputs and writes its outputs once), as XLA's own cost model counts them.
  collectives  per kind, the bytes one device moves over its links, ring accounting on a group of n devices:
               all-gather out (n-1)/n, reduce-scatter in (n-1)/n, all-reduce 2 in (n-1)/n, all-to-all in (n-1)/n,
               collective-permute in. Async pairs (-start/-done) count once; TPU's "all-reduce-scatter" fusions
               count as reduce-scatters.

Every count is multiplied by how often its computation runs: the product of the `known_trip_count` of the while loops
around it (a loop without one counts once and is reported in `unknown_trip_counts`). Both branches of a conditional
are counted (an upper bound: the vision tower skips empty image chunks with one).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import defaultdict

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s4": 0.5, "u4": 0.5, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3fnuz": 1,
               "f8e5m2fnuz": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8,
               "s64": 8, "u64": 8, "c64": 8, "c128": 16}
COLLECTIVE_KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_SHAPE = re.compile(r"\b(" + "|".join(sorted(DTYPE_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\))?\s*->.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLEES = re.compile(r"\b(body|condition|to_apply|calls|true_computation|false_computation|branch_computations)"
                      r"=(\{[^}]*\}|%?[\w.\-]+)")
# instructions that move no data through memory themselves (control flow, views, tuples)
_NO_MEMORY_TRAFFIC = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "conditional",
                      "call", "after-all", "partition-id", "replica-id", "iota", "all-gather-done", "all-reduce-done",
                      "collective-permute-done", "async-done", "copy-done", "opt-barrier"}
_OPERAND_NAME = re.compile(r"%([\w.\-]+)\s*$")


@dataclasses.dataclass(frozen=True)
class Shape:
    dtype: str
    dims: tuple[int, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.dims)

    @property
    def bytes(self) -> float:
        return self.elements * DTYPE_BYTES[self.dtype]

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.dims))}]"


def shapes_in(text: str) -> list[Shape]:
    return [Shape(m.group(1), tuple(int(d) for d in m.group(2).split(",") if d)) for m in _SHAPE.finditer(text)]


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    result: list[Shape]      # the result type (several for a tuple)
    operands: list[Shape]    # the operand types printed inline
    attrs: str               # everything after the operand list
    operand_text: str = ""

    @property
    def result_bytes(self) -> float:
        return sum(s.bytes for s in self.result)

    @property
    def operand_bytes(self) -> float:
        return sum(s.bytes for s in self.operands)


@dataclasses.dataclass
class Collective:
    kind: str
    shape: Shape             # the largest array it moves (gathered output, scattered input, reduced operand)
    group_size: int
    link_bytes: float        # per device per execution
    count: float             # executions per program run (trip counts multiplied)
    computation: str
    name: str

    @property
    def total_bytes(self) -> float:
        return self.link_bytes * self.count


@dataclasses.dataclass
class Loop:
    name: str
    body: str
    trip_count: int | None
    count: float             # how often the loop itself starts


@dataclasses.dataclass
class HloStats:
    flops: float
    collectives: list[Collective]
    loops: list[Loop]
    unknown_trip_counts: int
    bodies: dict[str, set[str]]  # while-body computation -> every computation it runs (itself included)
    hbm_bytes: float = 0.0       # estimate: operands + results of every unfused instruction, trip counts included

    def bytes_by_kind(self) -> dict[str, float]:
        out = {k: 0.0 for k in COLLECTIVE_KINDS}
        for c in self.collectives:
            out[c.kind] += c.total_bytes
        return out

    @property
    def collective_bytes(self) -> float:
        return sum(c.total_bytes for c in self.collectives)

    def top_collectives(self, n: int = 5) -> list[tuple[str, Shape, float, float]]:
        """(kind, shape, executions, total bytes) of the n largest contributors, same kind and shape merged."""
        merged: dict[tuple[str, str], list] = {}
        for c in self.collectives:
            entry = merged.setdefault((c.kind, str(c.shape)), [c.kind, c.shape, 0.0, 0.0])
            entry[2] += c.count
            entry[3] += c.total_bytes
        return [tuple(e) for e in sorted(merged.values(), key=lambda e: -e[3])[:n]]

    def collectives_in_loop(self, body: str) -> list[Collective]:
        inside = self.bodies.get(body, set())
        return [c for c in self.collectives if c.computation in inside]


def _split_operands(rest: str) -> tuple[str, str, str]:
    """'opcode(operands), attrs' -> (opcode, operands, attrs), with nested parentheses in the operands."""
    open_at = rest.index("(")
    depth = 0
    for i in range(open_at, len(rest)):
        if rest[i] == "(":
            depth += 1
        elif rest[i] == ")":
            depth -= 1
            if depth == 0:
                return rest[:open_at].strip(), rest[open_at + 1:i], rest[i + 1:]
    return rest[:open_at].strip(), rest[open_at + 1:], ""


def _parse_instruction(line: str) -> Instruction | None:
    m = _INSTRUCTION.match(line)
    if not m:
        return None
    name, rhs = m.group(1), m.group(2)
    if rhs.startswith("("):  # tuple result type
        depth = 0
        for i, ch in enumerate(rhs):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        type_text, rest = rhs[:i + 1], rhs[i + 1:].strip()
    else:
        type_text, _, rest = rhs.partition(" ")
    if "(" not in rest:
        return None
    opcode, operands, attrs = _split_operands(rest)
    inst = Instruction(name, opcode, shapes_in(type_text), [], attrs)
    inst.operand_text = operands
    return inst


def _top_level_split(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _resolve_operands(insts: list[Instruction], params: dict[str, list[Shape]]) -> None:
    """Operand shapes: printed inline (`f32[2,3]{1,0} %x`) or looked up by name in the computation."""
    table = dict(params)
    table.update({i.name: i.result for i in insts})
    for inst in insts:
        for operand in _top_level_split(inst.operand_text):
            inline = shapes_in(operand.rsplit("%", 1)[0]) if "%" in operand else []
            m = _OPERAND_NAME.search(operand)
            inst.operands.extend(inline or (table.get(m.group(1), []) if m else []))


def parse_computations(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """{computation name: its instructions}, and the entry computation's name."""
    comps: dict[str, list[Instruction]] = {}
    entry, current, params = "", None, {}
    for line in text.splitlines():
        stripped = line.strip()
        if current is None:
            m = _COMPUTATION.match(stripped)
            if m and not stripped.startswith("HloModule"):
                current = m.group(1)
                comps[current] = []
                header = stripped[stripped.find("(") + 1:stripped.rfind("->")]
                params = {}
                for p in _top_level_split(header.rstrip().rstrip(")")):
                    pname, _, ptype = p.partition(":")
                    params[pname.strip().lstrip("%")] = shapes_in(ptype)
                if stripped.startswith("ENTRY"):
                    entry = current
            continue
        if stripped == "}":
            _resolve_operands(comps[current], params)
            current = None
            continue
        inst = _parse_instruction(line)
        if inst is not None:
            comps[current].append(inst)
    return comps, entry


def _trip_count(attrs: str) -> int | None:
    m = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)', attrs)
    return int(m.group(1)) if m else None


def _trip_from_condition(comps: dict, cond: str) -> int | None:
    """A loop without a known_trip_count (TPU prints none): the bound N of the `i < N` compare its condition makes
    (scan loops count from 0 in steps of 1), in the condition or the fusion it calls; None unless exactly one integer
    constant is there to be N."""
    pending, seen, constants, compares = [cond], set(), set(), False
    while pending:
        name = pending.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for inst in comps[name]:
            if inst.opcode == "constant" and inst.result and inst.result[0].dims == () and \
                    inst.result[0].dtype in ("s32", "s64", "u32") and inst.operand_text.strip().isdigit():
                constants.add(int(inst.operand_text))
            compares |= inst.opcode == "compare" and "direction=LT" in inst.attrs
            pending.extend(c for _, c in _callees(inst))
    return constants.pop() if compares and len(constants) == 1 else None


def _callees(inst: Instruction) -> list[tuple[str, str]]:
    out = []
    for m in _CALLEES.finditer(inst.attrs):
        for callee in m.group(2).strip("{}").split(","):
            callee = callee.strip().lstrip("%")
            if callee:
                out.append((m.group(1), callee))
    return out


def _group_size(attrs: str, default: int) -> int:
    # mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, possibly with ", device_ids=([2,4]T(1,0))" before the braces
    m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(\[[\d,]*\](?:T\([\d,]*\))?\))?\s*\{([^}]*)\}",
                  attrs)
    if m:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
        return math.prod(sizes.get(a, 1) for a in re.findall(r"'([^']+)'", m.group(2)))
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
    if m:
        return max(1, len([x for x in m.group(1).split(",") if x]))
    return default


def _collective_kind(inst: Instruction) -> str | None:
    op = inst.opcode
    if op.endswith("-done"):
        return None
    if op == "fusion" and inst.name.startswith("all-reduce-scatter"):
        return "reduce-scatter"
    base = op[:-len("-start")] if op.endswith("-start") else op
    return base if base in COLLECTIVE_KINDS else None


def _link_bytes(kind: str, inst: Instruction, n: int) -> tuple[float, Shape]:
    biggest_out = max(inst.result, key=lambda s: s.bytes) if inst.result else Shape("u8", (0,))
    biggest_in = max(inst.operands, key=lambda s: s.bytes) if inst.operands else biggest_out
    frac = (n - 1) / n if n > 1 else 0.0
    if kind == "all-gather":  # an async start's result holds its operands, then the gathered outputs
        gathered = inst.result_bytes - (inst.operand_bytes if inst.opcode.endswith("-start") else 0.0)
        return gathered * frac, biggest_out
    if kind == "reduce-scatter":
        return inst.operand_bytes * frac, biggest_in
    if kind == "all-reduce":
        return 2.0 * inst.operand_bytes * frac, biggest_in
    if kind == "all-to-all":
        return inst.operand_bytes * frac, biggest_in
    return inst.operand_bytes, biggest_in  # collective-permute: every byte crosses a link once


def _dims(attrs: str, key: str) -> list[int]:
    m = re.search(key + r"=\{([\d,]*)\}", attrs)
    return [int(x) for x in m.group(1).split(",") if x] if m else []


def _dot_flops(inst: Instruction) -> float:
    if not inst.result or len(inst.operands) < 2:
        return 0.0
    lhs = inst.operands[0]
    contracting = math.prod(lhs.dims[d] for d in _dims(inst.attrs, "lhs_contracting_dims"))
    return 2.0 * inst.result[0].elements * contracting


def _conv_flops(inst: Instruction) -> float:
    if not inst.result or len(inst.operands) < 2:
        return 0.0
    m = re.search(r"dim_labels=\w+_(\w+)->", inst.attrs)
    rhs = inst.operands[1]
    out_features = rhs.dims[m.group(1).index("o")] if m and "o" in m.group(1) else 1
    return 2.0 * inst.result[0].elements * rhs.elements / max(out_features, 1)


def _custom_call_flops(inst: Instruction) -> float:
    target = re.search(r'custom_call_target="([^"]+)"', inst.attrs)
    target = target.group(1) if target else ""
    if ("gemm" in target.lower() or "cublas" in target.lower()) and len(inst.operands) >= 2:
        m = re.search(r'"lhs_contracting_dimensions"\s*:\s*\[([^\]]*)\]', inst.attrs)
        dims = [int(x.strip().strip('"')) for x in m.group(1).split(",") if x.strip()] if m else []
        lhs = inst.operands[0]
        return 2.0 * inst.result[0].elements * math.prod(lhs.dims[d] for d in dims)
    if target.startswith("__cudnn$fmha") and len(inst.operands) >= 3:
        q, k = inst.operands[0], inst.operands[1]  # [B, T, H, D] and [B, S, K, D] (BTNH layout)
        b, t, h, d = q.dims[:4]
        s = k.dims[1]
        per = 10.0 if "Backward" in target else 4.0
        causal = 0.5 if re.search(r'"mask_type"\s*:\s*"CAUSAL"', inst.attrs) else 1.0
        return per * b * h * t * s * d * causal
    m = re.search(r'\\?"flops\\?"\s*:\s*(\d+)', inst.attrs)  # Pallas / Mosaic kernels' declared cost estimate
    return float(m.group(1)) if m else 0.0


def instruction_flops(inst: Instruction) -> float:
    if inst.opcode == "dot":
        return _dot_flops(inst)
    if inst.opcode == "convolution":
        return _conv_flops(inst)
    if inst.opcode == "custom-call":
        return _custom_call_flops(inst)
    return 0.0


def memory_traffic(inst: Instruction) -> float:
    """Bytes an unfused instruction reads and writes. In-place updates of a slice of a big buffer (the scan carries
    that stack per-layer values) touch only the slice; a slice reads only what it returns."""
    name = (inst.name if inst.opcode == "fusion" else inst.opcode).replace("_", "-")
    if "dynamic-update-slice" in name and inst.operands:
        return 2.0 * (inst.operand_bytes - max(s.bytes for s in inst.operands))
    if "dynamic-slice" in name or inst.opcode == "slice":
        return 2.0 * inst.result_bytes
    if inst.opcode == "fusion" and any(s.dims == () and s.dtype in ("s32", "u32") for s in inst.operands):
        # a fusion given a loop index reads a slice of the stacked operands it indexes: at most its output's size
        cap = max(inst.result_bytes, 1.0)
        return sum(min(s.bytes, cap) for s in inst.operands) + inst.result_bytes
    return inst.operand_bytes + inst.result_bytes


def _users(insts: list[Instruction]) -> dict[str, list[Instruction]]:
    users: dict[str, list[Instruction]] = defaultdict(list)
    for inst in insts:
        for name in set(re.findall(r"%([\w.\-]+)", inst.operand_text)):
            users[name].append(inst)
    return users


def _only_sliced(name: str, users: dict[str, list[Instruction]]) -> bool:
    """Whether every use of an all-reduce's result (through get-tuple-element) keeps only a slice of it.

    XLA:GPU and XLA:TPU rewrite such an all-reduce into a reduce-scatter (ReduceScatterCreator); XLA:CPU has no such
    pass, so on simulated CPU devices it is counted as the reduce-scatter the targets compile."""
    pending, seen = [name], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        uses = users.get(current, [])
        if not uses:
            return False
        for use in uses:
            if use.opcode == "get-tuple-element":
                pending.append(use.name)
            elif not ("dynamic-slice" in use.name or "dynamic-update-slice" in use.name
                      or use.opcode == "dynamic-slice"):
                return False
    return True


def analyze(text: str, num_devices: int) -> HloStats:
    """Stats of one device's program (SPMD: every device runs the same one)."""
    comps, entry = parse_computations(text)
    count: dict[str, float] = defaultdict(float)
    count[entry] = 1.0
    edges: dict[str, list[tuple[str, float]]] = defaultdict(list)
    loops: list[Loop] = []
    unknown = 0
    skip_inside: set[str] = set()  # fusions that stand for one collective (TPU all-reduce-scatter)
    fused: set[str] = set()        # computations inside a fusion or custom call: their values stay on chip
    for comp, insts in comps.items():
        for inst in insts:
            if inst.opcode in ("fusion", "custom-call"):
                fused.update(c for _, c in _callees(inst))
            if _collective_kind(inst) == "reduce-scatter" and inst.opcode == "fusion":
                skip_inside.update(c for _, c in _callees(inst))
            for role, callee in _callees(inst):
                if callee not in comps or role == "to_apply" and inst.opcode != "call":
                    continue  # reductions' to_apply hold no matmul or collective
                factor = 1.0
                if inst.opcode == "while":
                    trips = _trip_count(inst.attrs)
                    if trips is None:
                        cond = next((c for r, c in _callees(inst) if r == "condition"), None)
                        trips = _trip_from_condition(comps, cond) if cond else None
                    if role == "body":
                        loops.append(Loop(inst.name, callee, trips, 0.0))
                        unknown += trips is None
                    factor = float(trips or 1) + (1.0 if role == "condition" else 0.0)
                edges[comp].append((callee, factor))
    # computations form a DAG: propagate counts in topological order from the entry
    order, seen = [], set()

    def visit(c):
        if c in seen:
            return
        seen.add(c)
        for callee, _ in edges.get(c, ()):
            visit(callee)
        order.append(c)

    visit(entry)
    for comp in reversed(order):
        for callee, factor in edges.get(comp, ()):
            count[callee] += count[comp] * factor
    bodies: dict[str, set[str]] = {}

    def reach(c, out):
        if c in out:
            return out
        out.add(c)
        for callee, _ in edges.get(c, ()):
            reach(callee, out)
        return out

    for loop in loops:
        bodies[loop.body] = reach(loop.body, set())
    flops, hbm, collectives = 0.0, 0.0, []
    for comp in order:
        n = count[comp]
        if comp in skip_inside or n == 0:
            continue
        users = _users(comps[comp])
        for inst in comps[comp]:
            flops += n * instruction_flops(inst)
            if comp not in fused and inst.opcode not in _NO_MEMORY_TRAFFIC:
                hbm += n * memory_traffic(inst)
            kind = _collective_kind(inst)
            if kind == "all-reduce" and _only_sliced(inst.name, users):
                kind = "reduce-scatter"
            if kind:
                group = _group_size(inst.attrs, num_devices)
                link, shape = _link_bytes(kind, inst, group)
                collectives.append(Collective(kind, shape, group, link, n, comp, inst.name))
    for comp, insts in comps.items():
        for inst in insts:
            if inst.opcode == "while":
                for loop in loops:
                    if loop.name == inst.name:
                        loop.count = count[comp]
    return HloStats(flops=flops, collectives=collectives, loops=loops, unknown_trip_counts=unknown, bodies=bodies,
                    hbm_bytes=hbm)


def memory_bytes(compiled) -> dict[str, float]:
    """Per-device bytes from `compiled.memory_analysis()`: arguments + outputs - aliased + temporaries + code (TPU's
    own peak can read below that sum)."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    get = lambda name: float(getattr(m, name, 0) or 0)  # noqa: E731
    parts = {"arguments": get("argument_size_in_bytes"), "outputs": get("output_size_in_bytes"),
             "aliased": get("alias_size_in_bytes"), "temporaries": get("temp_size_in_bytes"),
             "code": get("generated_code_size_in_bytes")}
    parts["total"] = parts["arguments"] + parts["outputs"] - parts["aliased"] + parts["temporaries"] + parts["code"]
    return parts


def to_json(stats: HloStats) -> str:
    return json.dumps({"flops": stats.flops, "bytes_by_kind": stats.bytes_by_kind(),
                       "unknown_trip_counts": stats.unknown_trip_counts})
