"""How well evopress's additive surrogate ranks offspring on a real oracle, from a finished journal.

Replays a journal (any optimizer's; ``evopress-ref``'s is the fair one, since its offspring were not
chosen by a surrogate) batch by batch: before each batch is told, the surrogate fitted on everything
before it predicts the batch's candidates, and the within-batch Spearman rank correlation of
predictions and measured values is recorded; the batch is then told (fidelity-weighted, ageing per
generation, as :class:`~levelsearch.EvoPress` does). No model evaluation is run::

    .venv/bin/python bench/surrogate_quality.py bench/results/efficiency/drop/evopress-ref-s0.db
    .venv/bin/python bench/surrogate_quality.py bench/results/efficiency/quant/evopress-ref-s0.db \\
        --prior-database ~/.cache/levelsearch/databases/smollm2-quant-gptq-<tag>

``--prior-database`` takes a variant database's per-unit normalised errors as the prior (what a weight
codec's problem offers as ``unit_errors``) and also reports the prior's own rank correlation.
A correlation near the measurement noise's ceiling says screening pays; a low one says the first
selection step's fidelity is too small for the differences between offspring.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from levelsearch import LevelSpace
from levelsearch.journal import Journal
from levelsearch.surrogate import AdditiveSurrogate


def _prior(root: Path, n_units: int) -> np.ndarray:
    man = json.loads((root / "manifest.json").read_text())
    errs = [man["layers"][str(man["units"][u]["layer"])]["errors"][u] for u in man["units"]]
    if len(errs) != n_units:
        raise SystemExit(f"the database has {len(errs)} units, the journal's space {n_units}")
    out = np.full((n_units, max(len(e) for e in errs)), np.nan)
    for i, e in enumerate(errs):
        out[i, : len(e)] = e
    return out


def _batches(journal: Journal) -> list[list]:
    """Consecutive evaluations that share ``(fidelity, sample)``: one selection step's candidates."""
    out: list[list] = []
    key = None
    for r in journal.records():
        if not r.ok:
            continue
        if (r.fidelity, r.sample) != key or not out:
            out.append([])
            key = (r.fidelity, r.sample)
        out[-1].append(r)
    return out


def replay(batches: list[list], space: LevelSpace, prior: np.ndarray | None) -> tuple[list[float], list[float]]:
    """Within-batch Spearman of the surrogate's predictions and of the prior alone, batch by batch."""
    sur = AdditiveSurrogate(space, prior=prior)
    top = max((b[0].fidelity or 0) for b in batches) or 1
    rho_sur: list[float] = []
    rho_prior: list[float] = []
    for b in batches:
        lv = np.stack([r.levels for r in b])
        v = np.array([r.value for r in b])
        if len(b) >= 4 and np.ptp(v) > 0:
            pred = sur.predict(lv)
            if np.ptp(pred) > 0:  # an empty surrogate ranks nothing
                rho_sur.append(float(spearmanr(pred, v).statistic))
            if prior is not None:
                p = np.nansum(prior[np.arange(space.n_units)[None, :], lv], axis=1)
                rho_prior.append(float(spearmanr(p, v).statistic))
        if len(b) >= 2:
            sur.add_batch(lv, v, 1.0 if b[0].fidelity is None else min(1.0, b[0].fidelity / top))
            sur.fit()
        if b[0].fidelity is None or b[0].fidelity >= top:  # the generation's last step
            sur.age()
    return rho_sur, rho_prior


def _package_commit() -> str | None:
    """The commit of the checkout the imported ``levelsearch`` comes from (a worktree of an older commit
    measures the surrogate before a change)."""
    import levelsearch

    try:
        where = str(Path(levelsearch.__file__).resolve().parent)
        return subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("journal", nargs="+")
    ap.add_argument("--prior-database", default=None, help="a variant database directory: its errors as prior")
    ap.add_argument("--out", default=None, help="write the correlations to this JSON file (with provenance)")
    args = ap.parse_args()
    record: dict[str, object] = {"levelsearch_commit": _package_commit(), "journals": {}}
    for path in args.journal:
        jr = Journal(path, readonly=True)
        spec = (jr.meta("identity") or {}).get("problem", {}).get("space")
        if not spec:
            raise SystemExit(f"{path}: no level space in the journal's identity")
        space = LevelSpace(np.asarray(spec["n_levels"], dtype=np.int64))
        batches = _batches(jr)
        prior = _prior(Path(args.prior_database).expanduser(), space.n_units) if args.prior_database else None
        rows = {}
        for label, p in [("no prior", None)] + ([("with prior", prior)] if prior is not None else []):
            rho, rho_p = replay(batches, space, p)
            half = rho[len(rho) // 2 :]
            line = (
                f"{path}: {label:10s}: within-batch Spearman {np.nanmean(rho):.3f} over {len(rho)} batches "
                f"(later half {np.nanmean(half):.3f})"
            )
            if rho_p:
                line += f"; the prior alone {np.nanmean(rho_p):.3f}"
            print(line)
            rows[label] = {
                "spearman": float(np.nanmean(rho)),
                "later_half": float(np.nanmean(half)),
                "batches": len(rho),
            }
        record["journals"][path] = rows  # type: ignore[index]
    if args.out:
        from provenance import provenance  # bench/ is this script's directory

        record["provenance"] = provenance()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
