"""summary.json and report.md of an evaluation directory."""

from __future__ import annotations

import json
import os

from oq2vl_jax.evals.runner import write_text_atomic

FAILURE_EXAMPLES = 3


def _fmt(x) -> str:
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def _short(text, n: int = 120) -> str:
    text = json.dumps(text) if not isinstance(text, str) else text
    text = text.replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= n else text[:n] + "..."


def write_summary(out_dir: str, summary: dict) -> str:
    path = os.path.join(out_dir, "summary.json")
    write_text_atomic(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return path


def render_report(summary: dict, records_by_task: dict[str, list[dict]]) -> str:
    run = summary.get("run", {})
    lines = ["# Evaluation report", "",
             f"Checkpoint `{run.get('ckpt', '')}`, prompt style `{run.get('prompt', '')}`, seed {run.get('seed', '')}. "
             "Scores in %. *strict*: the benchmarks' rule-based extraction and metric; *reference*: the original "
             "harness's scorers as written (docs/evaluation.md).", "",
             "| task | items | strict | reference |", "|---|---|---|---|"]
    tasks = summary.get("tasks", {})
    for name, t in tasks.items():
        done = f"{t['scored']}/{t['items']}"
        lines.append(f"| {name} | {done} | {_fmt(t.get('strict', {}).get('score', ''))} | "
                     f"{_fmt(t.get('reference', {}).get('score', ''))} |")
    for name, t in tasks.items():
        lines += ["", f"## {name}: {t['description']}", ""]
        extras = {k: v for k, v in t.get("strict", {}).items() if k not in ("score", "n", "by_category", "by_split")}
        extras.update({f"reference {k}": v for k, v in t.get("reference", {}).items()
                       if k not in ("score", "n", "by_category", "by_split")})
        if extras:
            lines.append("Also: " + ", ".join(f"{k} {_fmt(v)}" for k, v in extras.items()) + ".")
            lines.append("")
        for scorer in ("strict", "reference"):
            splits = t.get(scorer, {}).get("by_split")
            if splits:
                lines += [f"{scorer} per split:", "", "| split | accuracy | precision | recall | F1 | yes % | n |",
                          "|---|---|---|---|---|---|---|"]
                for s, m in splits.items():
                    lines.append(f"| {s} | {_fmt(m['accuracy'])} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | "
                                 f"{_fmt(m['f1'])} | {_fmt(m['yes_ratio'])} | {m['n']} |")
                lines.append("")
        cats = t.get("strict", {}).get("by_category", {})
        if cats:
            ref_cats = t.get("reference", {}).get("by_category", {})
            counts: dict[str, int] = {}
            for r in records_by_task.get(name, []):
                counts[r.get("category", "")] = counts.get(r.get("category", ""), 0) + 1
            lines += ["| category | n | strict | reference |", "|---|---|---|---|"]
            for c, v in cats.items():
                lines.append(f"| {c or '-'} | {counts.get(c, '')} | {_fmt(v)} | {_fmt(ref_cats.get(c, ''))} |")
            lines.append("")
        failures = [r for r in records_by_task.get(name, []) if r.get("strict", 1) < 1][:FAILURE_EXAMPLES]
        if failures:
            lines += ["Failures (strict):", "", "| id | answer | output | strict pred |", "|---|---|---|---|"]
            for r in failures:
                out = r["outputs"].get("answer", r["outputs"].get("pure", r["outputs"]))
                lines.append(f"| {r['id']} | {_short(r.get('answer', ''), 40)} | {_short(out)} | "
                             f"{_short(r.get('strict_pred', ''), 40)} |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, summary: dict, records_by_task: dict[str, list[dict]]) -> str:
    path = os.path.join(out_dir, "report.md")
    write_text_atomic(path, render_report(summary, records_by_task))
    return path
