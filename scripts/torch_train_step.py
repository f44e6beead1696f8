r"""Time forward + backward + AdamW training steps with PyTorch on CPU, as a baseline for sparsetune.

    /usr/bin/python3 scripts/torch_train_step.py --model /work/shared/models/stories260K --method lora \
        --batch-size 8 --seq-len 128 --steps 10

    /usr/bin/python3 scripts/torch_train_step.py --config my-config.json --method full

--model DIR reads DIR/config.json and DIR/model.safetensors; --config FILE random-inits the HF
config (llama/mistral/qwen2/gpt2). Float32, torch.set_num_threads(--threads, default 2), random
token batches (timing does not depend on token values). Prints one JSON line:
{method, step_ms, tokens_per_s, peak_rss_mb, ...}. step_ms is the median over the timed steps (after
--warmup untimed steps; mean and min are printed too); tokens_per_s = batch * seq / step_ms.
peak_rss_mb is the process's max RSS (includes ~230 MB of torch itself: see baseline_rss_mb).

Imports torch + stdlib only (torch_reference.py beside it is torch + stdlib too).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # leave no __pycache__ in scripts/
import torch_reference as ref  # noqa: E402

# PEFT's default target_modules per model type.
DEFAULT_LORA_TARGETS = {"llama": "q_proj,v_proj", "mistral": "q_proj,v_proj", "qwen2": "q_proj,v_proj", "gpt2": "c_attn"}


def rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF model dir with config.json + model.safetensors")
    src.add_argument("--config", help="HF config.json to random-init (N(0, 0.02) weights)")
    p.add_argument("--method", choices=["full", "lora", "forward"], default="full",
                   help="forward: the loss forward only (no_grad, no optimizer)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-targets", default=None, help="comma-separated module-name suffixes (default: PEFT's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("batch_size", "seq_len", "steps", "lora_rank", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def load(args: argparse.Namespace):
    if args.model:
        with open(os.path.join(args.model, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        st = os.path.join(args.model, "model.safetensors")
        if not os.path.exists(st):
            sys.exit(f"{st} not found (sharded checkpoints are not supported by this script)")
        weights = {k: v.to(torch.float32) for k, v in ref.read_safetensors(st).items()}
        return config, weights
    with open(args.config, encoding="utf-8") as f:
        config = json.load(f)
    std = float(config.get("initializer_range", 0.02))
    return config, ref.random_weights(config, args.seed, weight_std=std, embed_std=std)


def lora_proj(config: dict, weights: dict, targets: list, rank: int, alpha: float, gen: torch.Generator):
    """A projection hook adding scale * B(A x) on target sites; returns (proj, adapter params)."""
    base = ref.conv1d_proj(weights) if config["model_type"] == "gpt2" else ref.linear_proj(weights)
    scale = alpha / rank
    adapters = {}
    for site in ref.linear_sites(config):
        if site.rsplit(".", 1)[-1] not in targets:
            continue
        n_in, n_out = ref.site_in_out(config, weights, site)
        # PEFT init: A kaiming-uniform(a=sqrt(5)) == U(-1/sqrt(in), 1/sqrt(in)); B zeros.
        bound = 1.0 / math.sqrt(n_in)
        a = ((torch.rand(rank, n_in, generator=gen) * 2 - 1) * bound).requires_grad_()
        b = torch.zeros(n_out, rank, requires_grad=True)
        adapters[site] = (a, b)
    if not adapters:
        sys.exit(f"no site matches --lora-targets {','.join(targets)}")

    def proj(site: str, x: torch.Tensor) -> torch.Tensor:
        y = base(site, x)
        if site in adapters:
            a, b = adapters[site]
            y = y + scale * ((x @ a.t()) @ b.t())
        return y

    return proj, [t for pair in adapters.values() for t in pair]


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    baseline_rss = rss_mb()
    config, weights = load(args)
    mt = config.get("model_type")
    if mt == "gpt2" and args.seq_len > config["n_positions"]:
        sys.exit(f"--seq-len {args.seq_len} exceeds n_positions {config['n_positions']}")
    gen = torch.Generator().manual_seed(args.seed)

    if args.method == "forward":
        proj = None
        params = []
    elif args.method == "full":
        proj = None
        params = list(weights.values())
        for t in params:
            t.requires_grad_()
    else:
        targets = (args.lora_targets or DEFAULT_LORA_TARGETS.get(mt, "")).split(",")
        proj, params = lora_proj(config, weights, [t.strip() for t in targets if t.strip()],
                                 args.lora_rank, args.lora_alpha, gen)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay) if params else None
    vocab = config["vocab_size"]

    def step() -> float:
        ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=gen)
        if opt is None:
            with torch.no_grad():
                return ref.causal_lm_loss(ref.forward(weights, config, ids, proj=proj), ids).item()
        logits = ref.forward(weights, config, ids, proj=proj)
        loss = ref.causal_lm_loss(logits, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    losses = []
    for _ in range(args.warmup):
        losses.append(step())
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)

    # Median, not mean: the 2-core dev box is shared, and one preempted step skews a mean.
    step_s = statistics.median(times)
    print(json.dumps({
        "method": args.method,
        "step_ms": round(step_s * 1000, 3),
        "step_ms_mean": round(statistics.fmean(times) * 1000, 3),
        "step_ms_min": round(min(times) * 1000, 3),
        "tokens_per_s": round(args.batch_size * args.seq_len / step_s, 1),
        "peak_rss_mb": round(rss_mb(), 1),
        "baseline_rss_mb": round(baseline_rss, 1),
        "model": args.model or args.config,
        "model_type": mt,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "trainable_params": sum(t.numel() for t in params),
        "total_params": sum(t.numel() for t in weights.values()),
        "lora": {"rank": args.lora_rank, "alpha": args.lora_alpha} if args.method == "lora" else None,
        "loss_first": round(losses[0], 5),
        "loss_last": round(losses[-1], 5),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
