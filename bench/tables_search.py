"""Published tables of the search itself (optimizer overhead, the stopping rule, where search pays), built from
the committed files under ``bench/results/`` by ``bench/tables.py``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _read(rel: str) -> Any:
    return json.loads((RESULTS / rel).read_text())


def _markdown(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


OVERHEAD_NAMES = {
    "evopress-ref": "evopress-ref",
    "evopress:surrogate=false": "evopress, no surrogate",
    "evopress": "**evopress** (surrogate on)",
}


def overhead() -> str:
    """Milliseconds of optimizer work per candidate (ask + tell, a free fitness), before and after the sparse
    surrogate, with each run's ratio to evopress-ref measured in the same run."""
    runs = [("before", _read("overhead/before/overhead.json")), ("now", _read("overhead/overhead.json"))]
    sizes = [str(n) for n in runs[-1][1]["sizes"]]
    header = ["optimizer", "code"] + [f"n = {int(n):,}" for n in sizes] + ["× evopress-ref at n = 1,000"]
    rows = []
    for key, name in OVERHEAD_NAMES.items():
        for label, run in runs:
            row = run["optimizers"].get(key)
            if row is None:
                continue
            commit = (run.get("levelsearch_commit") or "")[:7]
            cells = [f"{row['ms_per_candidate'][n]:.3f}" for n in sizes]
            ratio = row.get("ratio_to_evopress_ref", {}).get("1000")
            rows.append([name, f"{label} ({commit})", *cells, "" if ratio is None else f"{ratio:.1f}"])
    load = ", ".join(f"{run['load_average'][0]:.0f}" for _, run in runs)
    note = (
        f"\n\n{runs[-1][1]['candidates']:,} candidates per cell; {runs[-1][1]['cpus']} CPUs with a load average "
        f"of {load} (before, now): compare within a run, by the ratio."
    )
    return _markdown(header, rows) + note


def surrogate_quality() -> str:
    """Within-batch Spearman correlation of the surrogate's predictions with the measured values, replaying
    evopress-ref's committed journals (``bench/surrogate_quality.py``), before and after the sparse fit."""
    runs = [("before", _read("surrogate-quality/before.json")), ("now", _read("surrogate-quality/now.json"))]
    rows = []
    for journal in runs[-1][1]["journals"]:
        kind = Path(journal).parent.name
        cells = []
        for _, run in runs:
            r = run["journals"][journal]["no prior"]
            cells.append(f"{r['spearman']:.3f} (later half {r['later_half']:.3f})")
        rows.append([kind, runs[-1][1]["journals"][journal]["no prior"]["batches"], *cells])
    header = ["journal (evopress-ref, seed 0)", "batches"] + [
        f"{label} ({(run.get('levelsearch_commit') or '')[:7]})" for label, run in runs
    ]
    return _markdown(header, rows)


def stopping_rule() -> str:
    """The stopping rule at fixed work (``bench/stopping_rule.py``): work spent and the recommendation's true value,
    rule off against patience 5 and 20 generations (1e-3 relative gain), five seeds per problem."""
    res = _read("stopping-rule/results.json")
    header = ["problem", "rule", "work spent (mean, % of the budget)", "seeds ending as good as without the rule"]
    rows = []
    for name, prob in res["problems"].items():
        budget = float(next(iter(prob["budget"].values())))
        runs = prob["runs"]
        for key in ["off"] + [f"patience {k}" for k in res["patiences"]]:
            spent = sum(r[key]["cost"] for r in runs) / len(runs)
            same = sum(r[key]["true_value"] <= r["off"]["true_value"] + 1e-9 for r in runs)
            rows.append([name, key, f"{100 * spent / budget:.0f}%", f"{same} of {len(runs)}"])
    return _markdown(header, rows)


def run_defaults() -> str:
    """``levelsearch run`` with ``optimizer: {name: evopress}`` and nothing else (``bench/search_defaults.py``):
    what it used, and its best calibration KL on the whole pool after the tokens its search spent, beside
    ``compress`` at the same tokens and at the end of its run."""
    res = _read("search-defaults/results.json")
    header = ["run", "schedule from", "start from", "search tokens", "best calibration KL", "finished"]
    rows = []
    for name, run in res.items():
        if name in ("provenance", "compress"):
            continue
        d = run["summary"].get("defaults") or {}
        curve = run["curve"]
        rows.append(
            [
                name,
                d.get("schedule_from", ""),
                d.get("start_from", ""),
                f"{int(run['tokens_spent']):,}",
                f"{curve[-1][1]:.4f}" if curve else "",
                "yes" if run.get("finished") else "no (stopped before its budget)",
            ]
        )
    note = ""
    comp = res.get("compress")
    if comp is not None:
        if comp.get("best_at_run_evopress_tokens") is not None:
            at = f"≤ {int(comp['run_evopress_tokens']):,}"
            rows.append(["compress, same tokens", "compress (cpu)", comp["start"], at, _kl(comp, "at"), "yes"])
        done = comp["summary"]
        rows.append(["compress", "compress (cpu)", comp["start"], f"{int(done['tokens']):,}", _kl(comp, "end"), "yes"])
        same = comp.get("records_equal_to_run_evopress")
        if same:
            note = (
                f"\n\ncompress and run-evopress: their first {same['equal_leading_records']} journal records (of "
                f"{same['run_evopress_records']} and {same['compress_records']}) are the same requests (fidelity, data "
                "sample, assignment) with the same values."
            )
    # evopress-ref with the cpu schedule on the same problem, from the same start (bench/search_efficiency.py):
    # its best calibration KL within 240,000 forward tokens
    for seed in (0, 1, 2):
        trace = _read(f"efficiency/drop/evopress-ref-s{seed}.json")["trace"]
        start = _read(f"efficiency/drop/evopress-ref-s{seed}.summary.json")["start"]
        within = [t for t in trace if t["tokens"] <= 240_000]
        best = min(t["kl"] for t in within)
        rows.append([f"evopress-ref, seed {seed}", "compress (cpu)", start, "≤ 240,000", f"{best:.4f}", "yes"])
    # compress's committed demo run on the same problem (an older schedule: 16 offspring, no screening)
    demo = _read("smollm2-drop-0.25/results.json")
    evo = demo["methods"]["evopress"]
    rows.append(
        ["compress demo (16 offspring)", "compress (cpu)", evo["start"], f"{int(evo['tokens']):,}",
         f"{evo['calibration_kl']:.4f}", "yes"]
    )  # fmt: skip
    return _markdown(header, rows) + note


def _kl(comp: dict[str, Any], which: str) -> str:
    value = comp["best_at_run_evopress_tokens"] if which == "at" else comp["summary"]["calibration_kl"]
    return f"{float(value):.4f}"


def stopping_gguf() -> str:
    """The stopping rule on a GGUF compress run (``bench/stopping_rule.py --gguf``): the same command with the rule
    off (``--patience 0``) and on (compress's default), what each spent and where it ended."""
    res = _read("stopping-gguf/results.json")
    header = ["run", "generations", "search tokens", "calibration KL", "held-out ppl", "tokens saved", "why it stopped"]
    rows = []
    for name, run in res["runs"].items():
        evo = run["evopress"]
        rows.append(
            [
                name,
                evo["generations"],
                f"{int(evo['tokens']):,}",
                f"{evo['calibration_kl']:.5f}",
                f"{evo['heldout_ppl']:.3f}",
                f"{int(evo.get('tokens_saved') or 0):,}",
                evo.get("stop_reason", ""),
            ]
        )
    first = next(iter(res["runs"].values()))
    prior = first["dp-fisher"]
    note = (
        f"\n\nSmolLM2-135M at {res['target_bits_per_weight']} bits per weight of the searched tensors (llama.cpp "
        f"Q3_K_M's size), at most {res['generations']} generations; both start from dp-fisher (calibration KL "
        f"{prior['calibration_kl']:.5f}, held-out ppl {prior['heldout_ppl']:.3f})."
    )
    return _markdown(header, rows) + note


#: (label, results.json under bench/results/, the prior's baseline in it, what the budget is)
PAYS = [
    ("gguf", "gguf-smollm2/fisher-t4.634375/results.json", "dp-fisher", "4.63 bpw (llama.cpp Q3_K_M's size)"),
    ("gguf", "gguf-smollm2/fisher-t5.534375/results.json", "dp-fisher", "5.53 bpw (llama.cpp Q4_K_M's size)"),
    ("gguf", "stopping-gguf/rule-off/results.json", "dp-fisher", "4.63 bpw (llama.cpp Q3_K_M's size)"),
    ("gguf", "gguf-smollm2/t4.634375/results.json", "dp", "4.63 bpw (llama.cpp Q3_K_M's size)"),
    ("quant (GPTQ)", "search-pays/quant-2.5/results.json", "dp-fisher", "2.5 bits"),
    ("quant (GPTQ)", "search-pays/quant-3/results.json", "dp-fisher", "3 bits"),
    ("quant (GPTQ)", "smollm2-quant-2.5/results.json", "dp", "2.5 bits"),
    ("quant (GPTQ)", "smollm2-quant-3/results.json", "dp", "3 bits"),
    ("sparsity", "smollm2-sparsity-0.7/results.json", "dp", "70%"),
    ("sparsity", "smollm2-sparsity-0.5/results.json", "dp", "50%"),
]


def where_search_pays() -> str:
    """EvoPress against the knapsack optimum of the per-unit estimates (dp: layer errors; dp-fisher: Fisher-
    weighted), SmolLM2-135M, from ``levelsearch compress`` results."""
    rows, skipped = [], []
    for codec, rel, prior, budget in PAYS:
        if not _has_provenance(rel):  # a table is built only from files that say where they came from
            skipped.append(rel.split("/")[0])
            continue
        res = _read(rel)
        m, evo = res["methods"], res["methods"]["evopress"]
        base = m[prior]
        gain = 1.0 - evo["calibration_kl"] / base["calibration_kl"]
        rows.append(
            [
                codec,
                budget,
                prior,
                f"{base['calibration_kl']:.4f}",
                f"{evo['calibration_kl']:.4f}",
                f"{100 * gain:.1f}%",
                f"{base['heldout_ppl']:.2f} → {evo['heldout_ppl']:.2f}",
                f"{int(evo['generations'])} ({int(evo['tokens']):,} tokens)",
                str(evo.get("start", "")),
            ]
        )
    header = [
        "codec",
        "budget",
        "prior",
        "prior's calibration KL",
        "EvoPress's",
        "gain",
        "held-out ppl",
        "generations (search tokens)",
        "EvoPress started from",
    ]
    note = f"\n\nNot shown until their files record provenance: {', '.join(skipped)}." if skipped else ""
    return _markdown(header, rows) + note


def _has_provenance(rel: str) -> bool:
    """Whether a compress results file has a ``provenance.json`` beside it or above it (checked without
    opening the file: a table opens only files that say where they came from)."""
    folder = (RESULTS / rel).parent
    while folder != RESULTS:
        if (folder / "provenance.json").is_file():
            return True
        folder = folder.parent
    return False


TABLES: dict[str, Callable[[], str]] = {
    "overhead": overhead,
    "surrogate-quality": surrogate_quality,
    "stopping-rule": stopping_rule,
    "run-defaults": run_defaults,
    "where-search-pays": where_search_pays,
    "stopping-gguf": stopping_gguf,
}
