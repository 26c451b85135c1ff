"""Throughput of the dropping fitness on a real model: plain forward vs candidate evaluation.

Prints tokens/s of
  1. the plain dense forward (Hugging Face ``model(input_ids).logits`` + log-softmax),
  2. the fitness of the dense model (layer-by-layer runner + KL to the cached teacher),
  3. a stream of *different* feasible candidates evaluated one at a time, against the same
     number of evaluations of *one* candidate (every candidate drops the same number of
     equally sized sub-blocks, so the work is the same): the difference is the cost of
     switching candidates,
  4. the prefix-sharing speed-up of a batch of EvoPress offspring (``evaluate_many``) over
     evaluating them one by one, and of a final-step survivor that reuses its parent's
     stored layer states.
Measurements alternate (A, B, A, B, ...) so that load from other processes hits both sides.

    python bench/llm_throughput.py [--model smollm2] [--tokens 512] [--repeats 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from levelsearch.adapters.codecs.drop.problem import DropProblem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--target", type=float, default=0.25)
    ap.add_argument("--tokens", type=int, default=512, help="tokens per evaluation (multiple of --seq-len)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--offspring", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prob = DropProblem(
        args.model,
        target=args.target,
        seq_len=args.seq_len,
        calibration_tokens=args.tokens,
        heldout_tokens=args.seq_len,
        chunk_tokens=args.tokens,
    )
    n_tok = prob.calibration.n_tokens
    ids = prob.calibration.tokens
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    prob.teacher("calibration")
    print(f"model {args.model}: {prob.map.n_layers} layers, {torch.get_num_threads()} threads, {n_tok} tokens/eval")
    print(f"teacher (dense forward + top-{prob.top_k}): {n_tok / (time.perf_counter() - t0):8.1f} tokens/s")

    @torch.inference_mode()
    def plain() -> None:
        torch.log_softmax(prob.model(input_ids=ids, use_cache=False).logits.float(), -1)

    dense = np.zeros(prob.space.n_units, dtype=np.int64)
    same = prob.space.sample(rng)
    stream = [prob.space.sample(rng) for _ in range(args.repeats)]
    times: dict[str, list[float]] = {"plain": [], "dense": [], "same": [], "stream": []}
    plain()
    prob.score([same])
    for r in range(args.repeats):
        for name, fn in (
            ("plain", plain),
            ("dense", lambda: prob.score([dense])),
            ("same", lambda: prob.score([same])),
            ("stream", lambda r=r: prob.score([stream[r]])),
        ):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    tot = {k: float(np.sum(v)) for k, v in times.items()}
    print(f"plain dense forward:               {n_tok * args.repeats / tot['plain']:8.1f} tokens/s")
    print(
        f"fitness of the dense model:        {n_tok * args.repeats / tot['dense']:8.1f} tokens/s "
        f"({100 * (tot['dense'] / tot['plain'] - 1):+.1f}% time vs plain)"
    )
    print(f"fitness, one candidate repeated:   {n_tok * args.repeats / tot['same']:8.1f} tokens/s")
    print(f"fitness, stream of candidates:     {n_tok * args.repeats / tot['stream']:8.1f} tokens/s")
    print(f"candidate switching cost:          {100 * (tot['stream'] / tot['same'] - 1):+.1f}% time")

    parent = prob.space.sample(rng)
    kids = []
    while len(kids) < args.offspring:
        k = prob.space.switch(parent, rng, int(min(rng.integers(1, 4), rng.integers(1, 4))))
        if not any(np.array_equal(k, o) for o in kids) and not np.array_equal(k, parent):
            kids.append(k)
    t = time.perf_counter()
    for k in kids:
        prob.score([k])
    one = time.perf_counter() - t
    t = time.perf_counter()
    prob.score(kids)
    shared = time.perf_counter() - t
    print(
        f"{args.offspring} offspring one by one: {one:7.1f} s; as one batch (shared prefixes): {shared:7.1f} s "
        f"-> speed-up x{one / shared:.2f}"
    )

    # final step: survivor vs parent on the whole pool, with and without the parent's stored states
    prob.store.clear()
    prob.score([parent], record=True)
    t = time.perf_counter()
    prob.score([kids[0]], record=False)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    prob.score([kids[0]], record=True)
    warm = time.perf_counter() - t
    print(
        f"final-step survivor: {cold:6.1f} s fresh, {warm:6.1f} s from the parent's stored states "
        f"-> speed-up x{cold / warm:.2f}"
    )


if __name__ == "__main__":
    main()
