"""Write the reference fixtures the TypeScript model code is tested against.

Regenerate (deterministic, byte-identical on the same torch build; takes a few seconds):

    /usr/bin/python3 scripts/make_fixtures.py

Needs only torch + stdlib (Debian's python3-torch); no transformers, no safetensors package.
The math lives in scripts/torch_reference.py, an independent float64 reference written from the
Hugging Face model definitions.

Output (paths relative to the repo root):
  test/fixtures/models/<name>/config.json        HF config (real field names)
  test/fixtures/models/<name>/model.safetensors  F32 weights, real HF parameter names
  test/fixtures/models/<name>/reference.json     inputs, float32 logits, loss (see build_reference)
  test/fixtures/stories260K-reference.json       logits + greedy ids of /work/shared/models/stories260K

Reference logits are computed in float64 from the float32 weights read back from the written
model.safetensors (so the file, not an in-memory copy, is what is checked), then rounded to float32
and printed with the fewest digits that round-trip to that float32.
"""
from __future__ import annotations

import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # leave no __pycache__ in scripts/
import torch_reference as ref  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "test", "fixtures")
STORIES_DIR = os.environ.get("STORIES260K_DIR", "/work/shared/models/stories260K")
PAD_ID = 0  # token id placed at padded positions (any id works: pads are masked out)


# ----------------------------------------------------------------------------------------------
# Model configurations (HF config.json contents)
# ----------------------------------------------------------------------------------------------


def llama_config(model_type: str, vocab: int, hidden: int, inter: int, heads: int, kv: int, **extra) -> dict:
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[model_type]
    cfg = {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "max_position_embeddings": 32,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if model_type == "llama":
        cfg.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
    cfg.update(extra)
    return cfg


MODELS = [
    # name, config, seq_len.  Sizes differ per model so that shape mix-ups cannot cancel out.
    ("llama-gqa", llama_config("llama", 97, 48, 96, 4, 2), 10),
    ("llama-mha-tied", llama_config("llama", 64, 32, 64, 4, 4, tie_word_embeddings=True), 12),
    ("llama-rope-linear",
     llama_config("llama", 80, 32, 72, 4, 2, rope_scaling={"rope_type": "linear", "factor": 2.0}), 9),
    # original_max_position_embeddings is 32, not 16: with head_dim 16 and theta 1e4 the
    # wavelengths are 6.3, 19.9, 62.8, ...; a threshold of 32/4 = 8 puts the first pair in the
    # high-frequency band (kept), the second in the smooth band, the rest in the low band (/8),
    # so all three branches of the llama3 rule are exercised (with 16 the high band is empty).
    ("llama-rope-llama3",
     llama_config("llama", 72, 32, 64, 4, 2, head_dim=16, max_position_embeddings=64,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}), 12),
    # hidden 40 / 4 heads = head_dim 10: a non power of two, rotate_half over 5-wide halves.
    ("mistral", llama_config("mistral", 88, 40, 80, 4, 2, sliding_window=None), 11),
    ("qwen2",
     llama_config("qwen2", 90, 32, 64, 4, 2, tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-06,
                  use_sliding_window=False, sliding_window=None, max_window_layers=2), 8),
    # Like the real openai-community/gpt2 config: no tie_word_embeddings key (HF default: tied).
    ("gpt2", {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": 70,
        "n_positions": 32,
        "n_ctx": 32,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-05,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
        "use_cache": True,
    }, 12),
]


# ----------------------------------------------------------------------------------------------
# Random weights with the real HF names and layouts
# ----------------------------------------------------------------------------------------------


def fixture_weights(cfg: dict, seed: int) -> dict:
    """Seeded float32 weights: N(0, 0.15^2) matrices, 1 + 0.1 N norms, 0.05 N biases, wider
    embeddings, so logits are far from flat."""
    embed_std = 0.2 if cfg["model_type"] == "gpt2" else 0.5
    return ref.random_weights(cfg, seed, weight_std=0.15, embed_std=embed_std, norm_std=0.1, bias_std=0.05)


# ----------------------------------------------------------------------------------------------
# JSON output: float32 values with the shortest round-tripping decimal
# ----------------------------------------------------------------------------------------------


def f32_short(x: float) -> float:
    """The double with the fewest significant digits that still rounds to the same float32."""
    target = struct.pack("<f", x)
    for digits in range(1, 10):
        y = float(f"{x:.{digits}g}")
        if struct.pack("<f", y) == target:
            return y
    return x


def to_f32_list(t: torch.Tensor):
    """Nested lists of short floats from a tensor, rounded to float32 first."""
    flat = [f32_short(v) for v in t.to(torch.float32).flatten().tolist()]

    def nest(data, shape):
        if len(shape) == 1:
            return data
        step = len(data) // shape[0]
        return [nest(data[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]

    return nest(flat, list(t.shape))


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def write_pretty_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Reference outputs
# ----------------------------------------------------------------------------------------------


def to_f64(weights: dict) -> dict:
    return {k: v.to(torch.float64) for k, v in weights.items()}


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = 1e-9) -> None:
    err = (a - b).abs().max().item()
    if err > tol:
        raise AssertionError(f"self-check failed: {what}: max abs diff {err:.3g} > {tol}")


def build_reference(cfg: dict, weights: dict, seq_len: int, seed: int) -> dict:
    """Inputs, logits and loss for one model; see the module docstring for the layout."""
    vocab = cfg["vocab_size"]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, seq_len), generator=g)
    # Make sure the first and last rows of the embedding table are read (off-by-one traps).
    ids[0, 1], ids[1, 2] = vocab - 1, 0
    logits = ref.forward(weights, cfg, ids)
    loss0 = ref.causal_lm_loss(logits[0], ids[0])
    loss_all = ref.causal_lm_loss(logits, ids)

    # Left-padded batch: row 0 = the first (seq_len - 3) tokens of input_ids[0] behind 3 pads,
    # row 1 = input_ids[1] without pads.
    n_pad = 3
    pad_ids = ids.clone()
    pad_ids[0, n_pad:] = ids[0, : seq_len - n_pad]
    pad_ids[0, :n_pad] = PAD_ID
    mask = torch.ones_like(ids)
    mask[0, :n_pad] = 0
    pos = ref.default_position_ids(mask)
    pad_logits = ref.forward(weights, cfg, pad_ids, mask, pos)
    # Causality + per-row positions mean real-token logits equal the unpadded ones.
    assert_close(pad_logits[0, n_pad:], logits[0, : seq_len - n_pad], "padded row 0 vs unpadded prefix")
    assert_close(pad_logits[1], logits[1], "unpadded row 1 in padded batch")
    pad_rows = to_f32_list(pad_logits)
    for b in range(2):
        for t in range(seq_len):
            if mask[b, t] == 0:
                pad_rows[b][t] = None  # pad positions carry no meaningful logits

    probs = torch.softmax(logits, -1)
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum(-1).mean().item()
    return {
        "model_type": cfg["model_type"],
        "input_ids": ids.tolist(),
        "logits": to_f32_list(logits),
        "loss": f32_short(loss0.item()),
        "loss_batch": f32_short(loss_all.item()),
        "padded": {
            "input_ids": pad_ids.tolist(),
            "attention_mask": mask.tolist(),
            "position_ids": pos.tolist(),
            "logits": pad_rows,
        },
        "stats": {"logits_std": f32_short(logits.std().item()), "mean_entropy": f32_short(entropy)},
    }


def make_model_fixture(index: int, name: str, cfg: dict, seq_len: int) -> dict:
    out_dir = os.path.join(FIXTURES, "models", name)
    os.makedirs(out_dir, exist_ok=True)
    weights = fixture_weights(cfg, seed=1000 + index)
    write_pretty_json(os.path.join(out_dir, "config.json"), cfg)
    st_path = os.path.join(out_dir, "model.safetensors")
    ref.write_safetensors(st_path, weights, metadata={"format": "pt"})

    # Compute from what is on disk, so names, layouts and dtypes are checked too.
    with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
        disk_cfg = json.load(f)
    disk_weights = ref.read_safetensors(st_path)
    for k, v in weights.items():
        if not torch.equal(disk_weights[k], v):
            raise AssertionError(f"safetensors round trip changed {k}")
    reference = build_reference(disk_cfg, to_f64(disk_weights), seq_len, seed=2000 + index)
    write_json(os.path.join(out_dir, "reference.json"), reference)
    n_params = sum(v.numel() for v in weights.values())
    return {"name": name, "params": n_params, "loss": reference["loss"], **reference["stats"]}


# ----------------------------------------------------------------------------------------------
# stories260K: real pretrained weights
# ----------------------------------------------------------------------------------------------


def decode_sentencepiece(ids, vocab_by_id) -> str:
    """Decode like the tokenizer.json decoder: '▁' -> ' ', byte fallback, strip one leading space."""
    out = bytearray()
    for i in ids:
        tok = vocab_by_id[i]
        if len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            out.append(int(tok[3:5], 16))
        elif tok in ("<s>", "</s>", "<unk>"):
            continue
        else:
            out += tok.replace("\u2581", " ").encode("utf-8")
    text = out.decode("utf-8", errors="replace")
    return text[1:] if text.startswith(" ") else text


def make_stories_fixture() -> dict:
    with open(os.path.join(STORIES_DIR, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    weights = to_f64(ref.read_safetensors(os.path.join(STORIES_DIR, "model.safetensors")))
    prompt = [1, 403, 407, 261, 378]
    logits = ref.forward(weights, cfg, torch.tensor([prompt]))[0]

    # 20 new tokens stop inside "outside"; the expected sentence ends at token 27. Greedy ids are
    # prefix-consistent, so one 27-token run gives both.
    ids = list(prompt)
    margins = []
    for _ in range(27):
        last = ref.forward(weights, cfg, torch.tensor([ids]))[0, -1]
        top2 = last.topk(2).values
        margins.append((top2[0] - top2[1]).item())
        ids.append(int(last.argmax().item()))
    generated = ids[len(prompt) :]

    with open(os.path.join(STORIES_DIR, "tokenizer.json"), encoding="utf-8") as f:
        vocab = json.load(f)["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    text = decode_sentencepiece(generated, by_id)
    expected = ", there was a little girl named Lily. She loved to play outside in the park."
    if text != expected:
        raise AssertionError(f"stories260K greedy text {text!r} != expected {expected!r}")

    def greedy(n: int) -> dict:
        return {
            "prompt_ids": prompt,
            "max_new_tokens": n,
            "generated_ids": generated[:n],
            "text": decode_sentencepiece(generated[:n], by_id),
            # Smallest gap between the best and second-best logit over the n steps: how far an
            # implementation's logits may drift before its greedy ids could differ.
            "min_top2_logit_margin": f32_short(min(margins[:n])),
        }

    obj = {
        "model": "shared/models/stories260K",
        "input_ids": prompt,
        "prompt_text": decode_sentencepiece(prompt, by_id),
        "logits": to_f32_list(logits),
        "greedy": greedy(20),
        "greedy_to_sentence_end": greedy(27),
    }
    write_json(os.path.join(FIXTURES, "stories260K-reference.json"), obj)
    return {"greedy_ids": generated, "text": text, "min_margin": min(margins)}


def main() -> None:
    torch.set_default_dtype(torch.float64)
    os.makedirs(os.path.join(FIXTURES, "models"), exist_ok=True)
    for index, (name, cfg, seq_len) in enumerate(MODELS):
        print(json.dumps(make_model_fixture(index, name, cfg, seq_len)))
    if os.path.isdir(STORIES_DIR):
        print(json.dumps({"stories260K": make_stories_fixture()}))
    else:
        print(f"skipping stories260K: {STORIES_DIR} not found (set STORIES260K_DIR)")


if __name__ == "__main__":
    main()
