"""Optuna samplers as levelsearch optimizers (``optuna-tpe``, ``optuna-cmaes``, ``optuna-gp``, ...).

Pinned to Optuna 5.x (``optuna>=5.0,<6``): defaults changed between 4.x and 5.0,
so every sampler argument that is not deprecated is set explicitly here. The
arguments Optuna 5 deprecates (TPE's ``consider_prior``, ``prior_weight``,
``consider_magic_clip``, ``consider_endpoints``, ``gamma``, ``weights``) are left
unset: in 5.x they are frozen at ``True``, ``1.0``, ``True``, ``False``,
Optuna's ``default_gamma`` and ``default_weights``.

Each optimizer runs one in-memory study through ``study.ask()`` /
``study.tell()``, one trial per candidate. Parameters are ``u<i>`` (integer
level of unit ``i``, ``"repair"`` encoding) or ``s<i>`` (a score in [0, 1],
``"rank"`` encoding, binary spaces only); see :mod:`levelsearch.baselines._common`.

Telling the repaired point. When repair (or the duplicate rule of
:mod:`levelsearch.baselines._common`) changed a proposal:

- ``optuna-tpe``, ``optuna-gp`` and ``optuna-random`` read every completed
  trial, so the asked trial is closed as FAIL and the *repaired* point is added
  with ``study.add_trial`` (the model only ever sees feasible points).
- ``optuna-cmaes`` and ``optuna-nsga2`` only learn from trials they sampled
  themselves (they tag them with their generation), so the asked trial is told
  the repaired point's value (the library believes the raw point scored it).

Failed evaluations (``inf``/NaN) are told as ``TrialState.FAIL``.
"""

from __future__ import annotations

import abc
import contextlib
import warnings
from typing import Any

import numpy as np

from levelsearch import LevelSpace

from ._common import EncodedBaseline

__all__ = ["OptunaTPE", "OptunaCMAES", "OptunaGP", "OptunaNSGA2", "OptunaRandom"]


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


class _OptunaBaseline(EncodedBaseline):
    #: whether the sampler learns from trials added with ``study.add_trial``
    lamarckian: bool = True

    def __init__(self, space: LevelSpace, *, seed: int = 0, encoding: str = "repair", batch: int = 1) -> None:
        super().__init__(space, seed=seed, encoding=encoding, batch=batch)
        optuna = _optuna()
        dist = optuna.distributions
        if self.encoding == "rank":
            self._names = [f"s{i}" for i in range(space.n_units)]
            self._dists = {nm: dist.FloatDistribution(0.0, 1.0) for nm in self._names}
        else:
            self._names = [f"u{i}" for i in range(space.n_units)]
            self._dists = {nm: dist.IntDistribution(0, int(space.max_level[i])) for i, nm in enumerate(self._names)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature notices (GP, CMA with margin)
            self._study = optuna.create_study(direction="minimize", sampler=self._make_sampler(optuna))
        self._optuna = optuna

    @abc.abstractmethod
    def _make_sampler(self, optuna: Any) -> Any:
        """The Optuna sampler, every default set explicitly."""

    def _ask_raw(self) -> tuple[Any, np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = self._study.ask(fixed_distributions=self._dists)
        raw = np.array([trial.params[nm] for nm in self._names], dtype=float)
        return trial, raw

    def _tell_raw(self, handle: Any, raw: np.ndarray, levels: np.ndarray, changed: bool, value: float | None) -> None:
        state = self._optuna.trial.TrialState
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if value is None:
                self._study.tell(handle, state=state.FAIL)
            elif changed and self.lamarckian:
                self._study.tell(handle, state=state.FAIL)
                # rank encoding: scores equal to the levels decode back to exactly these levels
                cast = float if self.encoding == "rank" else int
                params = {nm: cast(levels[i]) for i, nm in enumerate(self._names)}
                self._study.add_trial(
                    self._optuna.trial.create_trial(params=params, distributions=self._dists, value=value)
                )
            else:
                self._study.tell(handle, value)


class OptunaTPE(_OptunaBaseline):
    """Optuna's multivariate TPE (``optuna-tpe``); ``"repair"`` encoding by default, repaired points added.

    Explicit settings: ``n_startup_trials=10``, ``n_ei_candidates=24``,
    ``multivariate=True``, ``group=False``, ``constant_liar=False`` (the driver
    tells every batch before the next ask, so no trial is left running).
    """

    def _make_sampler(self, optuna: Any) -> Any:
        return optuna.samplers.TPESampler(
            n_startup_trials=10,
            n_ei_candidates=24,
            seed=self.seed,
            multivariate=True,
            group=False,
            constant_liar=False,
        )


class OptunaCMAES(_OptunaBaseline):
    """Optuna's CMA-ES with margin (``optuna-cmaes``); ``"repair"`` encoding by default, raw trial told.

    Explicit settings: ``x0=None`` (centre of the box), ``sigma0=None`` (1/6 of
    the box), ``n_startup_trials=1``, a seeded ``RandomSampler`` for anything
    CMA-ES cannot sample, ``consider_pruned_trials=False``,
    ``restart_strategy=None``, ``popsize=None`` (4 + 3 ln n), ``inc_popsize=-1``,
    ``use_separable_cma=False``, ``with_margin=True`` for integer levels (plain
    CMA-ES for rank scores, which are continuous), ``lr_adapt=False``.
    Needs the ``cmaes`` package.
    """

    lamarckian = False

    def _make_sampler(self, optuna: Any) -> Any:
        return optuna.samplers.CmaEsSampler(
            x0=None,
            sigma0=None,
            n_startup_trials=1,
            independent_sampler=optuna.samplers.RandomSampler(seed=self.seed),
            warn_independent_sampling=False,
            seed=self.seed,
            consider_pruned_trials=False,
            restart_strategy=None,
            popsize=None,
            inc_popsize=-1,
            use_separable_cma=False,
            with_margin=self.encoding == "repair",
            lr_adapt=False,
            source_trials=None,
        )


class OptunaGP(_OptunaBaseline):
    """Optuna's Gaussian-process sampler (``optuna-gp``); ``"repair"`` encoding, repaired points added.

    Explicit settings: ``n_startup_trials=10``, a seeded ``RandomSampler`` as
    independent sampler, ``deterministic_objective=False`` (noisy problems exist),
    ``warn_independent_sampling=False``. Needs torch; its cost per candidate grows
    with the number of trials (cubic), so long runs are slow. Each ask runs with
    one torch thread and one BLAS thread (restored afterwards; BLAS through
    threadpoolctl when it is installed): the GP's matrices are small, and on a
    shared machine the thread pools made asks over 10x slower.
    """

    def _ask_raw(self) -> tuple[Any, np.ndarray]:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with _one_blas_thread():
                return super()._ask_raw()
        finally:
            torch.set_num_threads(threads)

    def _make_sampler(self, optuna: Any) -> Any:
        return optuna.samplers.GPSampler(
            seed=self.seed,
            independent_sampler=optuna.samplers.RandomSampler(seed=self.seed),
            n_startup_trials=10,
            deterministic_objective=False,
            warn_independent_sampling=False,
        )


class OptunaNSGA2(_OptunaBaseline):
    """Optuna's NSGA-II on the single objective (``optuna-nsga2``); ``"repair"`` encoding, raw trial told.

    Explicit settings: ``population_size=50``, ``mutation=None`` (Optuna's
    uniform mutation), ``mutation_prob=None`` (1 / number of parameters),
    ``crossover=UniformCrossover(swapping_prob=0.5)``, ``crossover_prob=0.9``,
    ``swapping_prob=0.5``.
    """

    lamarckian = False

    def _make_sampler(self, optuna: Any) -> Any:
        return optuna.samplers.NSGAIISampler(
            population_size=50,
            mutation=None,
            mutation_prob=None,
            crossover=optuna.samplers.nsgaii.UniformCrossover(swapping_prob=0.5),
            crossover_prob=0.9,
            swapping_prob=0.5,
            seed=self.seed,
        )


class OptunaRandom(_OptunaBaseline):
    """Optuna's ``RandomSampler`` (``optuna-random``): uniform levels, then repaired (or rank-decoded)."""

    def _make_sampler(self, optuna: Any) -> Any:
        return optuna.samplers.RandomSampler(seed=self.seed)


def _one_blas_thread() -> Any:
    """Limit BLAS/OpenMP pools to one thread for a block (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)
