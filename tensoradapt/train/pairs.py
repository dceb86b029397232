"""Paired comparisons between two configurations of a finished sweep.

A sweep's table (`ablation.load_table`) holds one row per cell; a configuration is a (decomp, ranks) pair and
appears once per seed. ``paired_delta_m(rows, a, b)`` is Δm of `a` against `b` computed per seed from the two
cells of that seed (and, in a task-scaling sweep, of the same task set and trunk), with the mean, standard
deviation and the half-width of the 95 % t-interval over seeds. It is how every claim "A beats B by x ± y"
in the README is measured: ``python experiments/rank_ablation.py --out DIR --compare A B``.
"""
from __future__ import annotations

import statistics
from typing import Any, Sequence

from .stats import t_interval

__all__ = ["Config", "config_of", "parse_config", "paired_delta_m", "comparison_markdown"]

Config = tuple[str, str]  # (decomp, ranks as written in the table, "" for frozen / full)


def config_of(row: dict[str, Any]) -> Config:
    """The configuration a table row (one cell) belongs to."""
    return row["decomp"], str(row["ranks"] or "")


def parse_config(text: str, rows: Sequence[dict[str, Any]]) -> Config:
    """"tucker" or "tucker:4,8,8" -> ("tucker", "4,8,8"); a bare decomp must have one ranks in `rows`."""
    decomp, _, ranks = text.partition(":")
    have = sorted({config_of(r)[1] for r in rows if r["decomp"] == decomp})
    if not have:
        raise ValueError(f"configuration {text!r}: the table has no {decomp!r} cell "
                         f"(it has {sorted({r['decomp'] for r in rows})})")
    if not ranks and len(have) > 1:
        raise ValueError(f"configuration {text!r}: {decomp!r} runs at ranks {have}; write {decomp}:RANKS")
    ranks = ranks or have[0]
    if ranks not in have:
        raise ValueError(f"configuration {text!r}: {decomp!r} has no cell at ranks {ranks!r} (it has {have})")
    return decomp, ranks


def _metrics(row: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} back from a row's "task/metric" columns."""
    out: dict[str, dict[str, float]] = {}
    for k, v in row.items():
        if "/" in k and isinstance(v, (int, float)):
            task, metric = k.split("/", 1)
            out.setdefault(task, {})[metric] = v
    return out


def _condition(row: dict[str, Any]) -> tuple:
    """A row's (task_set, shared_blocks) condition ((None, None) in a sweep without those axes)."""
    return row.get("task_set"), row.get("shared_blocks")


def _groups(rows: Sequence[dict[str, Any]]) -> list[tuple]:
    """The conditions (`_condition`) in `rows`, sorted."""
    return sorted({_condition(r) for r in rows}, key=lambda g: tuple(map(str, g)))


def paired_delta_m(rows: Sequence[dict[str, Any]], a: Config, b: Config) -> dict[str, Any]:
    """Δm (percent, + = `a` better) of configuration `a` against `b`, one value per seed where both ran.

    Returns ``{"a", "b", "seeds", "per_seed", "mean", "std", "ci95", "two_cpus"}`` (std / ci95 nan for one
    seed; `two_cpus`: the seeds whose two cells record different CPU models, so that their difference also holds
    the machines'). Raises ValueError when no seed has both cells, or when `rows` hold several task sets or
    trunk depths (a task-scaling sweep): pass the rows of one condition, as `comparison_markdown` does."""
    from ..mtl import delta_m, get_tasks

    if len(_groups(rows)) > 1:
        raise ValueError(f"rows span several task sets / trunk depths {_groups(rows)}: compare within one")
    mine = {r["seed"]: r for r in rows if config_of(r) == a}
    theirs = {r["seed"]: r for r in rows if config_of(r) == b}
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        raise ValueError(f"no seed has both {a} and {b} cells")
    cpus = {s: (mine[s].get("cpu"), theirs[s].get("cpu")) for s in seeds}
    two_cpus = [s for s, (x, y) in cpus.items() if x and y and x != y]  # an unrecorded CPU is not flagged
    per_seed = []
    for seed in seeds:
        result, base = _metrics(mine[seed]), _metrics(theirs[seed])
        per_seed.append(float(delta_m(result, base, get_tasks(tuple(result)))))
    return {"a": a, "b": b, "seeds": seeds, "per_seed": per_seed, "mean": statistics.mean(per_seed),
            "std": statistics.stdev(per_seed) if len(per_seed) > 1 else float("nan"), "ci95": t_interval(per_seed),
            "two_cpus": two_cpus}


def _name(cfg: Config) -> str:
    return cfg[0] + (f" ({cfg[1]})" if cfg[1] else "")


def comparison_markdown(rows: Sequence[dict[str, Any]], pairs: Sequence[tuple[Config, Config]]) -> str:
    """A Markdown table: per pair (and per task set and trunk depth, in a task-scaling sweep), Δm per seed, the
    mean ± 95 % interval, and how many standard deviations the mean is from 0; a seed paired across two CPU
    models is starred and named under the table."""
    groups = _groups(rows)
    scaling = groups != [(None, None)]
    head = "| A | vs B | " + ("task set | k | " if scaling else "") + "seeds | Δm per seed (%) | Δm (95 % CI) | \\|mean\\| / std |"
    lines, notes = [head, "|" + "---|" * (head.count(" | ") + 1)], []
    for a, b in pairs:
        for task_set, k in groups:
            sub = [r for r in rows if _condition(r) == (task_set, k)]
            ran = [{r["seed"] for r in sub if config_of(r) == c} for c in (a, b)]
            if scaling and not ran[0] & ran[1]:  # e.g. the frozen encoder has no k > 0 cells: skip the condition
                continue
            p = paired_delta_m(sub, a, b)
            sigmas = f"{abs(p['mean']) / p['std']:.1f}" if p["std"] == p["std"] and p["std"] > 0 else "–"  # one seed
            ci = f" ± {p['ci95']:.2f}" if p["ci95"] == p["ci95"] else ""
            where = f"{task_set} | {k} | " if scaling else ""
            per_seed = " / ".join(f"{v:+.2f}" + "*" * (seed in p["two_cpus"])
                                  for seed, v in zip(p["seeds"], p["per_seed"]))
            lines.append(f"| {_name(a)} | {_name(b)} | {where}{len(p['seeds'])} | "
                         f"{per_seed} | {p['mean']:+.2f}{ci} | {sigmas} |")
            if p["two_cpus"]:
                notes.append(f"* {_name(a)} vs {_name(b)}{f' ({task_set}, k = {k})' if scaling else ''}: seed(s) "
                             f"{', '.join(map(str, p['two_cpus']))} paired cells of two CPU models")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
