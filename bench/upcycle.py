"""SmolLM2-135M sparsely upcycled into a Mixtral-style mixture of experts: a small MoE whose outputs mean something.

Each decoder layer's MLP (``gate_proj``, ``up_proj``, ``down_proj``) is copied into ``--experts`` experts (default
4), each copy perturbed by Gaussian noise of ``--noise`` (default 0.05) times the weight's own standard deviation,
and a router (``E × 576``, Gaussian, standard deviation ``--router-std`` / sqrt(576)) picks the top 2 per token
(their softmax weights renormalised to sum to one, as Mixtral does). Attention, norms and embeddings are
SmolLM2's. The result is deterministic given ``--seed`` (the noise comes from one ``torch.Generator``).

The model is written as a Hugging Face directory (``config.json`` with ``model_type: mixtral``,
``model.safetensors``, tokenizer files) to ``$LEVELSEARCH_CACHE/smollm2-moe`` (default
``~/.cache/levelsearch/smollm2-moe``), which ``--model smollm2-moe`` loads
(:func:`levelsearch.adapters.model.models.load_model`) and ``AutoModelForCausalLM.from_pretrained`` reads. Its
safetensors hold transformers 5's fused expert tensors: ``model.layers.<i>.mlp.gate.weight`` (``4 × 576``, the
router), ``model.layers.<i>.mlp.experts.gate_up_proj`` (``4 × 3072 × 576``: each expert's ``gate_proj`` rows,
then its ``up_proj`` rows) and ``model.layers.<i>.mlp.experts.down_proj`` (``4 × 576 × 1536``). ``build-info.json``
beside them records the seed, the settings and the held-out perplexity of both models.

Usage::

    python bench/upcycle.py                       # build (about a minute), print the path and both perplexities
    nice -n 5 python bench/upcycle.py --measure   # the fixed-work 3-bit run of bench/results/moe-smollm2-quant-3/
    python bench/upcycle.py --gguf                # the model as a GGUF source file (F16), beside it in the cache
    nice -n 5 python bench/upcycle.py --measure-gguf  # the fixed-work run at llama.cpp's Q3_K_M size

``--measure`` runs ``levelsearch compress --model smollm2-moe --method quant --target 3`` (EvoPress, uniform,
dp and dp-fisher at equal size; :data:`MEASURE`) and adds the provenance record to its ``results.json``.

``--gguf`` writes the upcycled model as llama.cpp stores a Mixtral (GGUF architecture ``llama`` with experts,
:func:`~levelsearch.adapters.codecs.gguf.convert.write_moe_gguf`, F16, SmolLM2's GGUF tokenizer) to
``$LEVELSEARCH_CACHE/smollm2-moe-f16.gguf`` (:func:`upcycled_gguf`); it is rewritten when the model directory is
newer. ``--measure-gguf`` (which writes it first if needed) runs ``levelsearch compress --method gguf`` on that
file at the size of llama.cpp's Q3_K_M mix on its searched tensors (``--target-bytes``, the exact bytes of the
mix's types: :func:`q3km_bytes`), 8 generations with the stopping rule off (:data:`MEASURE_GGUF`): EvoPress
against uniform, the mix of two neighbouring types, llama.cpp's stock mixes (our reproduction of their rules and,
where llama.cpp's tools are built, llama-quantize's own files), dp and dp-fisher. Its ``results.json`` goes to
``bench/results/moe-smollm2-gguf/`` with the source file's sha256 and the provenance record. Both measures resume
a stopped run from its journal in ``bench/results/<name>.run/`` when started again with the same command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "moe-smollm2-quant-3"
#: the fixed-work measure: 10 generations; 8192 calibration tokens for GPTQ's statistics, about 4096 routed to each
#: expert (top 2 of 4), well above the 1536 inputs of its down_proj (with 1024, GPTQ fits its ~512 tokens and a search
#: scored on them follows), the fitness on 4096 of them; 2048 held out
MEASURE = [
    "compress", "--model", "smollm2-moe", "--method", "quant", "--target", "3", "--format", "dense", "--no-export",
    "--generations", "10", "--calibration-tokens", "8192", "--search-tokens", "4096", "--heuristic-tokens", "2048",
    "--heldout-tokens", "2048",
    "--threads", "2", "--seed", "0", "--quiet",
]  # fmt: skip


OUT_GGUF = ROOT / "bench" / "results" / "moe-smollm2-gguf"
#: the fixed-work GGUF measure: 8 generations (stopping rule off), 1024 calibration and 2048 held-out tokens; the
#: model file and ``--target-bytes`` are added by :func:`measure_gguf`
MEASURE_GGUF = [
    "compress", "--method", "gguf", "--generations", "8", "--patience", "0", "--calibration-tokens", "1024",
    "--heuristic-tokens", "1024", "--heldout-tokens", "2048", "--threads", "2", "--seed", "0", "--quiet",
]  # fmt: skip
#: llama.cpp's mix whose size the GGUF measure searches at
GGUF_MIX = "Q3_K_M"


def upcycle(
    dense: Any, *, experts: int = 4, top_k: int = 2, noise: float = 0.05, router_std: float = 1.0, seed: int = 0
) -> Any:
    """A Mixtral model whose every layer's MLP is ``experts`` perturbed copies of ``dense``'s (a Llama model)."""
    from transformers import MixtralConfig, MixtralForCausalLM

    c = dense.config
    config = MixtralConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters), tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
        sliding_window=None, num_local_experts=experts, num_experts_per_tok=top_k, router_aux_loss_coef=0.0,
        architectures=["MixtralForCausalLM"],
    )  # fmt: skip
    moe = MixtralForCausalLM(config).eval()
    src = dense.state_dict()
    g = torch.Generator().manual_seed(seed)
    new: dict[str, torch.Tensor] = {}
    for name in moe.state_dict():
        if ".mlp." not in name:
            new[name] = src[name].float()
    h = c.hidden_size
    for i in range(c.num_hidden_layers):
        mlp = f"model.layers.{i}.mlp."

        def copies(w: torch.Tensor) -> torch.Tensor:
            sd = float(w.float().std())
            return torch.stack([w + noise * sd * torch.randn(w.shape, generator=g) for _ in range(experts)])

        gate, up, down = (src[f"{mlp}{p}.weight"].float() for p in ("gate_proj", "up_proj", "down_proj"))
        new[f"{mlp}gate.weight"] = torch.randn(experts, h, generator=g) * (router_std / math.sqrt(h))
        new[f"{mlp}experts.gate_up_proj"] = torch.cat([copies(gate), copies(up)], dim=1)
        new[f"{mlp}experts.down_proj"] = copies(down)
    moe.load_state_dict(new, strict=False)
    if config.tie_word_embeddings:
        moe.tie_weights()
    return moe


def heldout_ppl(model: Any, tokenizer: Any, tokens: int = 4096, seq_len: int = 256) -> float:
    """Perplexity on the held-out documents levelsearch compress uses (pydoc topics, seed 0), ``tokens`` of them."""
    from levelsearch.adapters.model.data import calibration_and_heldout

    _, held = calibration_and_heldout(tokenizer, seq_len=seq_len, calibration_tokens=seq_len, heldout_tokens=tokens)
    ids = torch.as_tensor(held.tokens[: tokens // seq_len])
    total, n = 0.0, 0
    with torch.inference_mode():
        for k in range(0, len(ids), 4):
            batch = ids[k : k + 4]
            logits = model(input_ids=batch, use_cache=False).logits.float()
            lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch[:, 1:, None])
            total -= float(lp.sum())
            n += lp.numel()
    return math.exp(total / n)


def build(args: argparse.Namespace) -> Path:
    from levelsearch.adapters.model.models import load_model, save_model, upcycled_moe_dir

    torch.set_num_threads(args.threads)
    dense, tok = load_model("smollm2", device="cpu", dtype="float32")
    moe = upcycle(dense, experts=args.experts, noise=args.noise, router_std=args.router_std, seed=args.seed)
    out = upcycled_moe_dir()
    save_model(moe, tok, out)
    info = {
        "source": "smollm2", "experts": args.experts, "top_k": 2, "noise": args.noise,
        "router_std": args.router_std, "seed": args.seed,
        "heldout_ppl": {"smollm2": heldout_ppl(dense, tok), "smollm2-moe": heldout_ppl(moe, tok)},
        "heldout_tokens": 4096,
        "parameters": sum(p.numel() for p in moe.parameters()),  # tied embedding and head counted once
    }  # fmt: skip
    (out / "build-info.json").write_text(json.dumps(info, indent=1))
    print(out)
    print(json.dumps(info["heldout_ppl"]))
    return out


def measure(out: Path) -> None:
    from provenance import provenance

    from levelsearch.cli import main

    scratch = out.with_name(out.name + ".run")  # a stopped measure resumes from its journal here
    rc = main([*MEASURE, "--out", str(scratch)])
    if rc != 0:
        raise SystemExit(rc)
    from levelsearch.adapters.model.models import upcycled_moe_dir

    res = json.loads((scratch / "results.json").read_text())
    res["upcycled"] = json.loads((upcycled_moe_dir() / "build-info.json").read_text())
    res["provenance"] = provenance()
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    for f in ("profile.png",):
        if (scratch / f).exists():
            shutil.copy(scratch / f, out / f)
    shutil.rmtree(scratch)
    print(out / "results.json")


def upcycled_gguf() -> Path:
    """The upcycled model as a GGUF file, ``$LEVELSEARCH_CACHE/smollm2-moe-f16.gguf``, beside its directory."""
    from levelsearch.adapters.model.models import upcycled_moe_dir

    d = upcycled_moe_dir()
    return d.with_name(d.name + "-f16.gguf")


def write_gguf() -> Path:
    """Write :func:`upcycled_gguf` from the built model directory (F16, SmolLM2's GGUF tokenizer); returns it."""
    from levelsearch.adapters.codecs.gguf.convert import write_moe_gguf
    from levelsearch.adapters.model.models import load_model, smollm2_gguf

    model, _tok = load_model("smollm2-moe", device="cpu", dtype="float32")
    path = write_moe_gguf(model, upcycled_gguf(), tokenizer_from=smollm2_gguf(), dtype="F16")
    print(path)
    return path


def q3km_bytes(path: Path, mix: str = GGUF_MIX) -> int:
    """Bytes of llama.cpp's stock ``mix`` on the tensors ``--method gguf`` searches in ``path`` (the decoder's
    attention and expert matrices; routers and norms are kept): each tensor in the type the mix's rules ask for
    after llama.cpp's fallback for its row length, rows × that type's row bytes."""
    from levelsearch.adapters.codecs.gguf.source import GGUFSource, llama_cpp_mix
    from levelsearch.adapters.codecs.gguf.types import effective_type, row_bytes

    src = GGUFSource.open(path)
    searched = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
    total = 0
    for name, t in src.tensors.items():
        parts = name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in searched:
            continue
        shape = [int(x) for x in t.shape][::-1]
        n_per_row, rows = shape[-1], int(np.prod(shape[:-1]))
        asked = llama_cpp_mix(mix, name, src.n_layers, n_per_row=n_per_row, n_expert=src.n_expert)
        total += rows * row_bytes(effective_type(asked, n_per_row), n_per_row)
    return total


def measure_gguf(out: Path) -> None:
    """The fixed-work GGUF run (:data:`MEASURE_GGUF`) at llama.cpp's Q3_K_M size; its ``results.json`` with the
    source file's sha256, the upcycled model's build record and the provenance record into ``out``."""
    from levelsearch.adapters.model.integrity import file_sha256
    from levelsearch.adapters.model.models import upcycled_moe_dir
    from provenance import provenance

    from levelsearch.cli import main

    src = upcycled_gguf()
    target = q3km_bytes(src)
    scratch = out.with_name(out.name + ".run")  # a stopped measure resumes from its journal here
    cmd = [*MEASURE_GGUF, "--model", str(src), "--target-bytes", str(target), "--out", str(scratch)]
    print("levelsearch " + " ".join(cmd), flush=True)
    rc = main(cmd)
    if rc != 0:
        raise SystemExit(rc)
    res = json.loads((scratch / "results.json").read_text())
    stock = res["methods"].get(f"llama.cpp-{GGUF_MIX}", {})
    if stock.get("searched_bytes") != target:
        raise SystemExit(f"llama.cpp-{GGUF_MIX} is {stock.get('searched_bytes')} bytes in the run, not {target}")
    res["upcycled"] = json.loads((upcycled_moe_dir() / "build-info.json").read_text())
    res["source_gguf"] = {
        "file": src.name, "dtype": "F16", "bytes": src.stat().st_size, "sha256": file_sha256(src),
        "written_by": "python bench/upcycle.py --gguf", "target_mix": GGUF_MIX, "target_bytes": target,
    }  # fmt: skip
    shown = [f"$LEVELSEARCH_CACHE/{src.name}" if c == str(src) else c for c in cmd[:-1]]
    res["command"] = "levelsearch " + " ".join([*shown, "OUT"])
    res["provenance"] = provenance()
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    for f in ("profile.png", "gguf_export.json"):
        if (scratch / f).exists():
            shutil.copy(scratch / f, out / f)
    shutil.rmtree(scratch)
    print(out / "results.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--router-std", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--measure", action="store_true", help="run the fixed-work 3-bit measure (builds first if needed)")
    p.add_argument("--gguf", action="store_true", help="write the model as a GGUF source file (F16) beside it")
    p.add_argument(
        "--measure-gguf", action="store_true", help="run the fixed-work gguf measure at llama.cpp's Q3_K_M size"
    )
    a = p.parse_args(argv)
    from levelsearch.adapters.model.models import upcycled_moe_dir

    built = (upcycled_moe_dir() / "build-info.json").is_file()
    if not built or not (a.measure or a.gguf or a.measure_gguf):
        build(a)
    if a.measure:
        measure(OUT)
    if a.gguf or a.measure_gguf:
        weights, gguf = upcycled_moe_dir() / "model.safetensors", upcycled_gguf()
        if a.gguf or not gguf.is_file() or gguf.stat().st_mtime < weights.stat().st_mtime:
            write_gguf()
    if a.measure_gguf:
        measure_gguf(OUT_GGUF)
    return 0


if __name__ == "__main__":
    sys.exit(main())
