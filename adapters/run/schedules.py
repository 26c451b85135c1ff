"""Selection schedules: the EvoPress options of a named schedule (``cpu``, ``drop``, ``super-fast``) for a
calibration pool (see :mod:`levelsearch.adapters.cli.compress` for what each one does)."""

from __future__ import annotations

from typing import Any

from levelsearch import PRESETS

__all__ = ["schedule_options"]


def schedule_options(
    name: str, pool_tokens: int, offspring: int | None = None, seq_len: int = 256, optimizer: str = "evopress"
) -> dict[str, Any]:
    """EvoPress options of a named selection schedule for a calibration pool of ``pool_tokens``.

    ``seq_len`` sets the ``cpu`` schedule's screening fidelity (one sequence). With the default
    ``optimizer="evopress"`` the ``cpu`` schedule evaluates 8 offspring a generation, the best of
    64 mutants by the surrogate's ranking (``screen=8``); ``evopress-ref`` evaluates 16 random ones.

    Raises:
        ValueError: unknown name, or a schedule asking for more tokens than the pool holds.
    """
    if name == "cpu":
        opts: dict[str, Any] = {
            "offspring": 16,
            "steps": [(int(seq_len), 3), (min(4 * int(seq_len), int(pool_tokens)), 1), (int(pool_tokens), 1)],
            "max_switches": 3,
        }
        if optimizer == "evopress":
            # the final step sees the whole pool: its values are exact, a loser is not retried
            opts.update(offspring=8, screen=8, no_repeats=True)
    elif name in ("drop", "super-fast"):
        opts = {k: v for k, v in PRESETS[name].items()}
    else:
        raise ValueError(f"unknown schedule {name!r}; use cpu, drop or super-fast")
    if offspring is not None:
        opts["offspring"] = int(offspring)
    asked = [int(f) for f, _ in opts["steps"] if f is not None] + [int(opts.get("init_fidelity") or 0)]
    if max(asked) > pool_tokens:
        raise ValueError(
            f"the {name} schedule asks for {max(asked)} tokens per candidate but the calibration pool holds "
            f"{pool_tokens}; raise --calibration-tokens or choose a smaller --schedule"
        )
    return opts
