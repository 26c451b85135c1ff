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

``--measure`` runs ``levelsearch compress --model smollm2-moe --method quant --target 3`` (EvoPress, uniform,
dp and dp-fisher at equal size; :data:`MEASURE`) and adds the provenance record to its ``results.json``.
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

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "moe-smollm2-quant-3"
#: the fixed-work measure: 10 generations of 16 offspring, 1024 calibration and 2048 held-out tokens
MEASURE = [
    "compress", "--model", "smollm2-moe", "--method", "quant", "--target", "3", "--format", "dense", "--no-export",
    "--generations", "10", "--calibration-tokens", "1024", "--heuristic-tokens", "1024", "--heldout-tokens", "2048",
    "--threads", "2", "--seed", "0", "--quiet",
]  # fmt: skip


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

    scratch = out.with_name(out.name + ".run")
    if scratch.exists():
        shutil.rmtree(scratch)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--router-std", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--measure", action="store_true", help="run the fixed-work 3-bit measure (builds first if needed)")
    a = p.parse_args(argv)
    from levelsearch.adapters.model.models import upcycled_moe_dir

    if not a.measure or not (upcycled_moe_dir() / "build-info.json").is_file():
        build(a)
    if a.measure:
        measure(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
