"""Variant databases: every unit's weight at every compression level, on disk.

Layout of a database directory::

    manifest.json          model fingerprint (sha256 of every weight), method, level spec, calibration, seed,
                           per-unit level values and errors, per-file sha256
    layer_000.safetensors  all variants of the linears of decoder layer 0
    ...

The database knows no compression kind: the spec's ``"kind"`` names a registered
:class:`~levelsearch.adapters.codecs.WeightCodec`, which says which modules are the units and what
their levels are, which calibration statistic it needs (the Hessian, its diagonal, the inputs), makes
every level's variant of a weight from its calibration Hessian, stores each variant
compactly (a sparsity variant as a bit mask plus fp16 nonzeros, a quantized one as packed
codes plus per-group scales and zero points, well under one dense fp16 copy per level) and
decodes it, and names the per-layer statistics its baselines need (OWL's outlier ratios).

The build runs the calibration driver layer by layer and writes each layer's
file atomically before recording it in the manifest: a killed build resumes at
the next unbuilt layer. A database refuses a model whose fingerprint differs.
The manifest carries a sha256 of itself and of every layer file: opening checks
them all, and a build reuses only what checks out (an edited or damaged manifest
starts the database over, a corrupted layer file is rebuilt, each said in one line).
Loading is memory-mapped (``safetensors.safe_open``) and :meth:`apply` only
swaps in units whose level changed. Decoded fp32 weights are kept in a bounded
LRU cache (:data:`DECODED_CACHE_BYTES`, 1 GiB by default): a search swaps the same
few hundred variants in and out over and over, and decoding a packed 3-bit
1536×576 matrix costs ~13 ms on a CPU against ~0.04 ms to copy it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..codecs.registry import get_weight_codec
from ..kernels.hessian import relative_output_error
from ..model.cache import cache_root
from ..model.calibration import layer_calibration
from ..model.integrity import file_sha256, json_checksum, say_rebuild, weights_fingerprint
from ..model.models import decoder_layers
from ..model.units import layer_units, named_units, unit_weight

if TYPE_CHECKING:  # the contract imports this module (a weight codec builds its problem here)
    from ..codecs.base import WeightCodec

__all__ = [
    "FORMAT",
    "default_database_dir",
    "model_fingerprint",
    "unit_level_values",
    "build_database",
    "VariantDatabase",
]

#: The database layout and identity (2: the model's fingerprint covers every byte of every weight).
FORMAT = 2


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over every weight of ``model``, all its bytes (the variants depend on every weight up to their
    layer, through the calibration statistics): :func:`~levelsearch.adapters.model.integrity.weights_fingerprint`."""

    return weights_fingerprint(model)


def default_database_dir(
    model_id: str, spec: dict[str, Any], calibration: dict[str, Any] | None = None, weights: str | None = None
) -> Path:
    """Where a database for ``model_id`` built with ``spec`` lives by default (under the model cache).

    ``weights`` (the model's :func:`model_fingerprint`) is part of the name: a model changed in place gets
    a database of its own, built afresh, instead of the old model's being refused or reused.
    """

    key = json.dumps({"spec": spec, "calibration": calibration or {}, "weights": weights}, sort_keys=True)
    tag = hashlib.sha256(key.encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(model_id))[-60:]
    return cache_root() / "databases" / f"{safe}-{spec['kind']}-{spec['method']}-{tag}"


def unit_level_values(spec: dict[str, Any], numel: int) -> list[Any]:
    """The level values of a unit with ``numel`` weights, as the spec's codec defines them: numbers of
    zeros (sparsity), bit-widths (quant), ``[zeros, bits]`` pairs (joint) ..."""
    return get_weight_codec(spec.get("kind")).level_values(spec, numel)


def _sha256(path: Path) -> str:
    """A layer file's sha256, memoised by its path, size, times and inode
    (:func:`~levelsearch.adapters.model.integrity.file_sha256`): opening a database again does not re-read it."""

    return file_sha256(path)


def _write_json(path: Path, obj: Any) -> None:
    """Write the manifest atomically with its checksum (sha256 of the rest, canonical JSON)."""

    body = {k: v for k, v in obj.items() if k != "checksum"}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**body, "checksum": json_checksum(body)}, indent=1))
    os.replace(tmp, path)


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path`` after checking its checksum.

    Raises:
        ValueError: unreadable JSON, no checksum (an older levelsearch wrote it) or a mismatch
            (edited errors, level values, layer checksums...): one line naming the file.
    """

    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} is unreadable ({type(exc).__name__})") from None
    if not isinstance(data, dict) or "checksum" not in data:
        raise ValueError(f"{path} has no checksum (written by an older levelsearch or by hand)")
    body = {k: v for k, v in data.items() if k != "checksum"}
    if data["checksum"] != json_checksum(body):
        raise ValueError(f"{path} fails its checksum (edited or corrupted)")
    return body


def build_database(
    root: str | os.PathLike[str],
    model: nn.Module,
    tokens: torch.Tensor,
    spec: dict[str, Any],
    *,
    codec: WeightCodec | None = None,
    model_id: str = "model",
    calibration: dict[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    on_layer: Callable[[int], None] | None = None,
    fingerprint: str | None = None,
) -> VariantDatabase:
    """Build (or finish building) the database of ``model`` at ``root``.

    Args:
        root: database directory (created if missing).
        model: the dense model (its weights are not modified).
        tokens: ``(n_seq, seq_len)`` calibration tokens.
        spec: ``{"kind": codec name, ...}``, checked by that codec, e.g. ``{"kind": "sparsity",
            "method": "sparsegpt"|"wanda"|"magnitude", "target": 0.5, "step": weights per level,
            "max_offset": 8}`` or ``{"kind": "quant", "method": "gptq"|"rtn", "bits": [2, 3, 4, 5, 6],
            "group_size": 128}`` (``block_size`` optional, default 128).
        codec: the codec of ``spec["kind"]`` (default: the registered one of that name).
        model_id: how the model was named (recorded; the fingerprint decides).
        calibration: description of the calibration data (source, tokens, seed), recorded.
        seed: recorded with the calibration description.
        batch_size: sequences per forward call of the calibration driver.
        progress: tqdm bar over layers.
        on_layer: called with a layer's index after its file is durably recorded.
        fingerprint: ``model``'s :func:`model_fingerprint` when the caller has it (saves hashing it again).

    Raises:
        ValueError: the directory holds a database for another model or with other settings.
    """
    codec = codec or get_weight_codec(spec.get("kind"))
    codec.check_spec(spec)
    units = codec.units(model)  # an architecture the unit finder cannot map fails here, before anything is written
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise ValueError(f"the database directory {path} is a file; give another --database")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot create the database directory {path} ({why}); give another --database") from None
    identity = {
        "format": FORMAT,
        "fingerprint": fingerprint or model_fingerprint(model),
        "spec": spec,
        "calibration": calibration or {},
        "seed": seed,
    }
    unit_table: dict[str, Any] = {}
    for name, layer, mod in units:
        w = unit_weight(mod)  # out × in
        unit_table[name] = {"layer": layer, "shape": list(w.shape), "values": codec.level_values(spec, w.numel())}
    manifest = _open_manifest(path, identity, {"model_id": model_id, "units": unit_table})
    done = {int(k) for k in manifest["layers"]}
    n_layers = 1 + max(layer for _, layer, _ in units)
    todo = [i for i in range(n_layers) if i not in done]
    if not todo:
        return VariantDatabase(path, verify=False, codec=codec)  # every layer file was just checked
    by_layer: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, layer, mod in units:
        by_layer.setdefault(layer, []).append((name, mod))
    for i, hessians, inputs in layer_calibration(
        model,
        tokens,
        batch_size=batch_size,
        start_layer=todo[0],
        progress=progress,
        activations=codec.statistics == "activations",
    ):
        if i in done:
            continue
        t0 = time.perf_counter()
        local = {id(m): n for n, m in layer_units(decoder_layers(model)[i])}
        stats = [
            (name, mod, hessians[local[id(mod)]], None if inputs is None else inputs[local[id(mod)]])
            for name, mod in by_layer.get(i, [])
        ]
        tensors, record = _build_layer(codec, spec, manifest, stats)
        fname = f"layer_{i:03d}.safetensors"
        tmp = path / (fname + ".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path / fname)
        manifest["layers"][str(i)] = {"file": fname, "sha256": _sha256(path / fname), **record}
        manifest["build_seconds"] = float(manifest["build_seconds"]) + time.perf_counter() - t0
        _write_json(path / "manifest.json", manifest)
        done.add(i)
        if on_layer is not None:
            on_layer(i)
    return VariantDatabase(path, verify=False, codec=codec)  # every layer file was just checked or written


def _open_manifest(path: Path, identity: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """The manifest of the database at ``path`` for ``identity``: the one there when it checks out and
    belongs to ``identity`` (its layers whose files fail their checksum dropped, to be rebuilt), else a
    new one of ``identity`` and ``fresh`` (model id, units).

    Raises:
        ValueError: the directory holds a database of another model or with other settings.
    """

    mpath = path / "manifest.json"
    manifest: dict[str, Any] | None = None
    if mpath.is_file():
        try:
            manifest = _read_manifest(mpath)
        except ValueError as exc:  # an edited or damaged manifest is never used: start the database over
            say_rebuild(path, f"is not used: {exc}")
            mpath.unlink()
    if manifest is None:
        manifest = {**identity, **fresh, "layers": {}, "build_seconds": 0.0}
        _write_json(mpath, manifest)
        return manifest
    if manifest.get("format") != identity["format"]:
        raise ValueError(
            f"{path} holds a database of another levelsearch version (format {manifest.get('format')}, this one "
            f"reads {identity['format']}); delete it or use another directory"
        )
    if manifest.get("fingerprint") != identity["fingerprint"]:
        raise ValueError(
            f"{path} holds a database built for another model ({manifest.get('model_id')}); use another directory"
        )
    if {k: manifest.get(k) for k in identity} != identity:
        raise ValueError(f"{path} holds a database built with other settings; use another directory")
    for key, rec in list(manifest["layers"].items()):  # a built layer is reused only if its file checks out
        f = path / rec["file"]
        if not f.is_file() or _sha256(f) != rec["sha256"]:
            say_rebuild(f, "is missing or fails its checksum (corrupted)")
            del manifest["layers"][key]
            _write_json(mpath, manifest)
    return manifest


def _build_layer(
    codec: WeightCodec, spec: dict[str, Any], manifest: dict[str, Any], units: list[tuple[str, Any, Any, Any]]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every level's variant of the ``(name, module, Hessian, inputs)`` units of one decoder layer: the
    tensors of the layer file, and its manifest record (output errors, the codec's layer statistics)."""
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, list[float]] = {}
    pairs = []
    for name, mod, h, x in units:
        w = unit_weight(mod).detach().to(torch.float32).contiguous()  # out × in, whatever the module stores
        pairs.append((w, h))
        errs = []
        variants = codec.make_variants(spec, w, codec.select_statistics(h, x), manifest["units"][name]["values"])
        for k, var in enumerate(variants):
            errs.append(relative_output_error(w, codec.dense(var), h))
            for part, t in codec.encode(var).items():
                tensors[f"{name}/{k}/{part}"] = t.contiguous()
        errors[name] = errs
    return tensors, {"errors": errors, **codec.layer_statistics(spec, pairs)}


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors of a decoded variant: a tensor, or an object (a dataclass ...) holding tensors."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    parts = vars(obj).values() if hasattr(obj, "__dict__") else obj if isinstance(obj, (list, tuple)) else ()
    return sum(_nbytes(p) for p in parts if isinstance(p, (torch.Tensor, list, tuple)) or hasattr(p, "__dict__"))


#: Default bound, in bytes, of a :class:`VariantDatabase`'s cache of decoded fp32 weights.
DECODED_CACHE_BYTES = 1 << 30


class VariantDatabase:
    """A finished database, opened read-only and memory-mapped.

    Args:
        root: the database directory.
        verify: check the manifest's checksum (always) and every layer file's sha256 on open
            (default); a mismatch is a ``ValueError``: a corrupted database is never used.
        cache_bytes: bound on the decoded weights kept in memory, least recently used
            evicted first (default :data:`DECODED_CACHE_BYTES`, 1 GiB; 0 disables the cache).
        codec: the codec of the spec's ``kind`` (default: the registered one of that name).

    Attributes:
        manifest: the parsed manifest.
        unit_names: units in model order.
        spec: the level spec it was built with.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        cache_bytes: int = DECODED_CACHE_BYTES,
        verify: bool = True,
        codec: WeightCodec | None = None,
    ) -> None:
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValueError(f"cache_bytes must be a non-negative integer, got {cache_bytes!r}")
        self.cache_bytes = cache_bytes
        self._decoded: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self.cached_bytes = 0
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"{self.root} holds no variant database (no manifest.json); build one first")
        try:
            self.manifest = _read_manifest(mpath)
        except ValueError as exc:
            raise ValueError(f"{exc}; rebuild the database (delete {self.root})") from None
        self.spec: dict[str, Any] = self.manifest["spec"]
        self.codec = codec or get_weight_codec(self.spec.get("kind"))
        self.unit_names: list[str] = list(self.manifest["units"])
        layers = {u["layer"] for u in self.manifest["units"].values()}
        missing = sorted(layers - {int(k) for k in self.manifest["layers"]})
        if missing:
            raise ValueError(
                f"the database at {self.root} is incomplete (layers {missing[:5]} unbuilt); build it again"
            )
        self._handles: dict[int, Any] = {}
        self._current: dict[str, int] = {}
        if verify:
            self.verify()

    @property
    def kind(self) -> str:
        return str(self.spec["kind"])

    def values(self, unit: str) -> list[Any]:
        """Level values of ``unit`` by level index: zeros (sparsity), bits (quant) or ``[zeros, bits]`` (joint)."""
        return list(self.manifest["units"][unit]["values"])

    def shape(self, unit: str) -> tuple[int, int]:
        s = self.manifest["units"][unit]["shape"]
        return int(s[0]), int(s[1])

    def errors(self) -> np.ndarray:
        """``(n_units, max_levels)`` normalised output errors ``tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)`` (nan-padded)."""
        k = max(len(self.values(u)) for u in self.unit_names)
        out = np.full((len(self.unit_names), k), np.nan)
        for i, u in enumerate(self.unit_names):
            e = self.manifest["layers"][str(self.manifest["units"][u]["layer"])]["errors"][u]
            out[i, : len(e)] = e
        return out

    def statistics(self, name: str) -> dict[int, Any]:
        """A per-layer statistic the codec recorded while building (e.g. ``"owl"``), by decoder layer.

        Raises:
            ValueError: the database holds no statistic of that name.
        """
        layers = self.manifest["layers"]
        if any(name not in v for v in layers.values()):
            raise ValueError(f"the database at {self.root} holds no per-layer statistic {name!r}")
        return {int(k): v[name] for k, v in layers.items()}

    def size_bytes(self) -> int:
        """Bytes of all layer files on disk."""
        return sum((self.root / v["file"]).stat().st_size for v in self.manifest["layers"].values())

    def check_model(self, model: nn.Module) -> None:
        """Raise ``ValueError`` if ``model`` is not the model the database was built for."""
        if model_fingerprint(model) != self.manifest["fingerprint"]:
            raise ValueError(
                f"the database at {self.root} was built for another model ({self.manifest.get('model_id')}); "
                "build one for this model"
            )

    def verify(self) -> None:
        """Check every layer file against its recorded sha256 (``ValueError`` on a mismatch)."""
        for v in self.manifest["layers"].values():
            f = self.root / v["file"]
            if not f.is_file() or _sha256(f) != v["sha256"]:
                raise ValueError(f"{self.root / v['file']} is corrupt (checksum mismatch); rebuild the database")

    def _handle(self, layer: int) -> Any:
        if layer not in self._handles:
            f = self.root / self.manifest["layers"][str(layer)]["file"]
            self._handles[layer] = safe_open(str(f), framework="pt")
        return self._handles[layer]

    def weight(self, unit: str, level: int) -> Any:
        """What the codec decodes ``unit`` at level index ``level`` to (for the built-in codecs the fp32
        ``(out, in)`` weight), as a copy that is yours to change."""
        w = self._cached(unit, level)
        return w.clone() if isinstance(w, torch.Tensor) else copy.deepcopy(w)

    def _cached(self, unit: str, level: int) -> Any:
        """The decoded variant from the LRU cache (decoded on a miss); callers must not modify it."""
        key = (unit, int(level))
        w = self._decoded.get(key)
        if w is not None:
            self._decoded.move_to_end(key)
            return w
        w = self._decode(unit, int(level))
        size = _nbytes(w)
        if size <= self.cache_bytes:
            self._decoded[key] = w
            self.cached_bytes += size
            while self.cached_bytes > self.cache_bytes:
                _, old = self._decoded.popitem(last=False)
                self.cached_bytes -= _nbytes(old)
        return w

    def _decode(self, unit: str, level: int) -> Any:
        values = self.values(unit)
        if not 0 <= level < len(values):
            raise ValueError(f"unit {unit} has levels 0..{len(values) - 1}, got {level}")
        f = self._handle(int(self.manifest["units"][unit]["layer"]))
        key = f"{unit}/{level}"
        return self.codec.decode(self.spec, values[level], self.shape(unit), lambda part: f.get_tensor(f"{key}/{part}"))

    def put(self, module: nn.Module, unit: str, level: int) -> bool:
        """Apply ``unit`` at ``level`` to ``module`` (the codec's ``apply_variant``) unless it is already there;
        True if it was applied."""
        if self._current.get(unit) == level:
            return False
        self.codec.apply_variant(module, self._cached(unit, level))
        self._current[unit] = level
        return True

    def apply(self, model: nn.Module, levels: Sequence[int] | np.ndarray) -> int:
        """Put every unit of ``model`` at its level (by index, in :attr:`unit_names` order).

        Only units whose level differs from what this database last applied are
        loaded. Returns the number of units swapped in. Call :meth:`forget` if
        the model's weights were changed by someone else.
        """
        lv = [int(x) for x in levels]
        if len(lv) != len(self.unit_names):
            raise ValueError(f"an assignment needs {len(self.unit_names)} levels, got {len(lv)}")
        modules = named_units(model)
        return sum(self.put(modules[unit], unit, level) for unit, level in zip(self.unit_names, lv))

    def forget(self, unit: str | None = None) -> None:
        """Forget which level ``unit`` (default: every unit) has in the model, so the next load happens."""
        if unit is None:
            self._current.clear()
        else:
            self._current.pop(unit, None)
