"""Independent PyTorch reference for the architectures sparsetune implements.

Written from the math of the Hugging Face model definitions (not imported from them), so the
TypeScript graphs can be checked against a second implementation. Imports only torch + stdlib.

Contents:
  - read_safetensors / write_safetensors: a small safetensors reader/writer.
  - rope_inv_freq: HF default / linear / llama3 inverse frequencies.
  - llama_forward: Llama, Mistral, Qwen2 (RMSNorm, RoPE, GQA, SwiGLU, optional qkv bias).
  - gpt2_forward: GPT-2 (LayerNorm, learned positions, Conv1D layout, gelu_new).
  - forward: dispatch on config["model_type"].
  - random_weights: seeded float32 weights under the HF names/layouts for a config.
  - causal_lm_loss: HF convention (labels = input_ids, shifted inside).

Every forward takes `weights` (HF parameter name -> tensor) and the parsed config.json, and an
optional `proj(site, x)` hook so callers (e.g. a LoRA benchmark) can wrap any Linear site.
"""
from __future__ import annotations

import array
import json
import math
import sys
import os
import struct
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

Weights = Dict[str, torch.Tensor]
Proj = Callable[[str, torch.Tensor], torch.Tensor]

# ----------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, JSON header, then the raw data buffer.
# ----------------------------------------------------------------------------------------------

_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
# The raw-buffer views below assume a little-endian host, like the format itself.
assert sys.byteorder == "little", "torch_reference safetensors I/O assumes a little-endian host"


def read_safetensors(path: str) -> Weights:
    """Read every tensor of a .safetensors file (copies, so the file can be closed)."""
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len].decode("utf-8"))
    base = 8 + header_len
    out: Weights = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        shape = list(info["shape"])
        count = math.prod(shape)
        if count == 0:
            out[name] = torch.zeros(shape, dtype=dtype)
            continue
        # frombuffer shares memory with the bytes object; clone to own it.
        t = torch.frombuffer(bytearray(blob[base + start : base + end]), dtype=dtype, count=count)
        out[name] = t.reshape(shape).clone()
    return out


_ARRAY_CODES = {torch.float64: "d", torch.float32: "f", torch.int64: "q", torch.int32: "i",
                torch.int16: "h", torch.int8: "b", torch.uint8: "B", torch.bool: "B"}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a tensor without numpy (array module, native = little here)."""
    t = t.detach().contiguous().cpu().flatten()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return array.array(_ARRAY_CODES[t.dtype], t.tolist()).tobytes()


def write_safetensors(path: str, tensors: Weights, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write tensors (in the given order) to `path` atomically (temp file + rename)."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    chunks = []
    offset = 0
    for name, t in tensors.items():
        raw = _tensor_bytes(t)
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
    header_bytes += b" " * ((8 - len(header_bytes) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------


def rope_inv_freq(config: dict, head_dim: int) -> torch.Tensor:
    """Inverse frequencies for RoPE, float64, following HF's rope init functions.

    default: 1 / theta^(2i/d).  linear: default / factor (same as dividing positions).
    llama3: low frequencies (wavelength > original_ctx / low_freq_factor) are divided by
    `factor`, high frequencies (wavelength < original_ctx / high_freq_factor) are kept, and the
    band in between interpolates smoothly between the two.
    """
    theta = float(config.get("rope_theta", 10000.0))
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    scaling = config.get("rope_scaling")
    if not scaling:
        return inv_freq
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling["low_freq_factor"])
        high = float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_freq_wavelen = old_ctx / low
        high_freq_wavelen = old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    raise ValueError(f"rope_scaling type {rope_type!r} is not implemented in the reference")


def default_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions of real tokens count from 0 after left padding: cumsum(mask) - 1, clamped at 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention; q,k,v are [B, H, T, D]; attention_mask [B, T] (1 = real token)."""
    t = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    allowed = causal[None, :, :] & attention_mask.bool()[:, None, :]  # [B, Tq, Tk]
    scores = scores.masked_fill(~allowed[:, None, :, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    # A pad query in a left-padded row sees no real key: its row is all -inf -> NaN. Those rows
    # are meaningless; zero them so they cannot leak into anything.
    probs = torch.nan_to_num(probs, nan=0.0)
    return probs @ v


def _split_heads(x: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, n_heads, head_dim).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


# ----------------------------------------------------------------------------------------------
# Llama family (llama, mistral, qwen2)
# ----------------------------------------------------------------------------------------------

LLAMA_FAMILY = ("llama", "mistral", "qwen2")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def llama_head_dim(config: dict) -> int:
    hd = config.get("head_dim")
    return int(hd) if hd else config["hidden_size"] // config["num_attention_heads"]


def llama_tied(config: dict, weights: Weights) -> bool:
    # HF LlamaConfig/MistralConfig/Qwen2Config all default tie_word_embeddings to False.
    tied = bool(config.get("tie_word_embeddings", False))
    if not tied and "lm_head.weight" not in weights:
        raise ValueError("config says untied embeddings but lm_head.weight is missing")
    return tied


def linear_proj(weights: Weights) -> Proj:
    """Default site projection for nn.Linear layout: weight [out, in], y = x W^T + b."""

    def proj(site: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weights[site + ".weight"], weights.get(site + ".bias"))

    return proj


def llama_forward(
    weights: Weights,
    config: dict,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    position_ids: Optional[torch.Tensor] = None,
    proj: Optional[Proj] = None,
) -> torch.Tensor:
    """Logits [B, T, vocab] of a Llama-family causal LM (computes in the weights' dtype)."""
    proj = proj or linear_proj(weights)
    n_heads = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_heads
    head_dim = llama_head_dim(config)
    eps = float(config.get("rms_norm_eps", 1e-6))
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError("reference implements hidden_act silu only")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = default_position_ids(attention_mask)

    embed = weights["model.embed_tokens.weight"]
    x = embed[input_ids]
    dtype = x.dtype
    inv_freq = rope_inv_freq(config, head_dim)
    angles = position_ids.to(torch.float64)[..., None] * inv_freq  # [B, T, D/2]
    emb = torch.cat((angles, angles), dim=-1)
    cos = emb.cos().to(dtype)[:, None, :, :]  # broadcast over heads
    sin = emb.sin().to(dtype)[:, None, :, :]

    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms_norm(x, weights[p + "input_layernorm.weight"], eps)
        q = _split_heads(proj(p + "self_attn.q_proj", h), n_heads, head_dim)
        k = _split_heads(proj(p + "self_attn.k_proj", h), n_kv, head_dim)
        v = _split_heads(proj(p + "self_attn.v_proj", h), n_kv, head_dim)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # GQA: KV head j serves query heads j*rep .. (j+1)*rep-1.
        rep = n_heads // n_kv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        attn = _merge_heads(_attend(q, k, v, attention_mask))
        x = x + proj(p + "self_attn.o_proj", attn)
        h = rms_norm(x, weights[p + "post_attention_layernorm.weight"], eps)
        gated = F.silu(proj(p + "mlp.gate_proj", h)) * proj(p + "mlp.up_proj", h)
        x = x + proj(p + "mlp.down_proj", gated)

    x = rms_norm(x, weights["model.norm.weight"], eps)
    head = embed if llama_tied(config, weights) else weights["lm_head.weight"]
    return x @ head.t()


# ----------------------------------------------------------------------------------------------
# GPT-2
# ----------------------------------------------------------------------------------------------


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def conv1d_proj(weights: Weights) -> Proj:
    """Default site projection for GPT-2's Conv1D layout: weight [in, out], y = x W + b."""

    def proj(site: str, x: torch.Tensor) -> torch.Tensor:
        return x @ weights[site + ".weight"] + weights[site + ".bias"]

    return proj


def gpt2_forward(
    weights: Weights,
    config: dict,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    position_ids: Optional[torch.Tensor] = None,
    proj: Optional[Proj] = None,
) -> torch.Tensor:
    """Logits [B, T, vocab] of GPT2LMHeadModel (lm_head tied to wte)."""
    proj = proj or conv1d_proj(weights)
    n_embd = config["n_embd"]
    n_head = config["n_head"]
    head_dim = n_embd // n_head
    eps = float(config.get("layer_norm_epsilon", 1e-5))
    if config.get("activation_function", "gelu_new") != "gelu_new":
        raise ValueError("reference implements activation_function gelu_new only")
    if config.get("scale_attn_by_inverse_layer_idx") or config.get("reorder_and_upcast_attn"):
        raise ValueError("reference does not implement scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = default_position_ids(attention_mask)

    wte = weights["transformer.wte.weight"]
    x = wte[input_ids] + weights["transformer.wpe.weight"][position_ids]

    def ln(name: str, y: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(y, (n_embd,), weights[name + ".weight"], weights[name + ".bias"], eps)

    for layer in range(config["n_layer"]):
        p = f"transformer.h.{layer}."
        qkv = proj(p + "attn.c_attn", ln(p + "ln_1", x))
        q, k, v = qkv.split(n_embd, dim=-1)
        q, k, v = (_split_heads(t, n_head, head_dim) for t in (q, k, v))
        x = x + proj(p + "attn.c_proj", _merge_heads(_attend(q, k, v, attention_mask)))
        m = gelu_new(proj(p + "mlp.c_fc", ln(p + "ln_2", x)))
        x = x + proj(p + "mlp.c_proj", m)

    x = ln("transformer.ln_f", x)
    head = weights.get("lm_head.weight", wte)
    return x @ head.t()


# ----------------------------------------------------------------------------------------------
# Dispatch and loss
# ----------------------------------------------------------------------------------------------


def forward(weights: Weights, config: dict, input_ids: torch.Tensor, attention_mask=None, position_ids=None, proj=None):
    """Logits for any supported model_type."""
    mt = config.get("model_type")
    if mt in LLAMA_FAMILY:
        return llama_forward(weights, config, input_ids, attention_mask, position_ids, proj)
    if mt == "gpt2":
        return gpt2_forward(weights, config, input_ids, attention_mask, position_ids, proj)
    raise ValueError(f"model_type {mt!r} is not implemented in the reference")


def linear_sites(config: dict) -> list:
    """HF module paths of every Linear/Conv1D site (the names adapters target)."""
    mt = config.get("model_type")
    if mt in LLAMA_FAMILY:
        names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
        return [f"model.layers.{i}.{n}" for i in range(config["num_hidden_layers"]) for n in names]
    if mt == "gpt2":
        names = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
        return [f"transformer.h.{i}.{n}" for i in range(config["n_layer"]) for n in names]
    raise ValueError(f"model_type {mt!r} is not implemented in the reference")


def site_in_out(config: dict, weights: Weights, site: str) -> tuple:
    """(in_features, out_features) of a site, whatever the weight layout."""
    w = weights[site + ".weight"]
    return (w.shape[0], w.shape[1]) if config.get("model_type") == "gpt2" else (w.shape[1], w.shape[0])


# ----------------------------------------------------------------------------------------------
# Random weights with the real HF names and layouts
# ----------------------------------------------------------------------------------------------


class _Draw:
    """Seeded float32 draws; the draw order below is part of the fixtures' reproducibility."""

    def __init__(self, seed: int, weight_std: float, embed_std: float, norm_std: float, bias_std: float):
        self.g = torch.Generator().manual_seed(seed)
        self.weight_std, self.embed_std, self.norm_std, self.bias_std = weight_std, embed_std, norm_std, bias_std

    def normal(self, shape, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=self.g, dtype=torch.float32) * std

    def weight(self, *shape) -> torch.Tensor:
        return self.normal(shape, self.weight_std)

    def embed(self, *shape) -> torch.Tensor:
        return self.normal(shape, self.embed_std)

    def norm(self, n: int) -> torch.Tensor:
        return 1.0 + self.normal((n,), self.norm_std)

    def bias(self, n: int) -> torch.Tensor:
        return self.normal((n,), self.bias_std)


def random_weights(config: dict, seed: int, weight_std: float = 0.02, embed_std: float = 0.02,
                   norm_std: float = 0.0, bias_std: float = 0.0) -> Weights:
    """float32 weights for `config` under their HF names and layouts, in HF state_dict order.

    Defaults mimic HF init (N(0, 0.02), norms 1, biases 0). Llama family: q/k/v biases only for
    qwen2; lm_head only when untied. GPT-2: Conv1D weights are [in, out]; lm_head is tied.
    """
    d = _Draw(seed, weight_std, embed_std, norm_std, bias_std)
    if config["model_type"] == "gpt2":
        n, v = config["n_embd"], config["vocab_size"]
        inner = config.get("n_inner") or 4 * n
        # wpe is drawn at half the embedding std: positions should not drown the tokens.
        w = {"transformer.wte.weight": d.embed(v, n), "transformer.wpe.weight": d.normal((config["n_positions"], n), embed_std / 2)}
        for i in range(config["n_layer"]):
            p = f"transformer.h.{i}."
            w[p + "ln_1.weight"], w[p + "ln_1.bias"] = d.norm(n), d.bias(n)
            w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"] = d.weight(n, 3 * n), d.bias(3 * n)
            w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"] = d.weight(n, n), d.bias(n)
            w[p + "ln_2.weight"], w[p + "ln_2.bias"] = d.norm(n), d.bias(n)
            w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"] = d.weight(n, inner), d.bias(inner)
            w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"] = d.weight(inner, n), d.bias(n)
        w["transformer.ln_f.weight"], w["transformer.ln_f.bias"] = d.norm(n), d.bias(n)
        return w
    if config["model_type"] not in LLAMA_FAMILY:
        raise ValueError(f"model_type {config['model_type']!r} is not implemented in the reference")
    h, inter, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = llama_head_dim(config)
    n_kv = config.get("num_key_value_heads") or config["num_attention_heads"]
    q_out, kv_out = config["num_attention_heads"] * hd, n_kv * hd
    qkv_bias = config["model_type"] == "qwen2"  # Qwen2: q/k/v biases, o_proj without
    w = {"model.embed_tokens.weight": d.embed(v, h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for proj_name, out in (("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)):
            w[p + f"self_attn.{proj_name}.weight"] = d.weight(out, h)
            if qkv_bias:
                w[p + f"self_attn.{proj_name}.bias"] = d.bias(out)
        w[p + "self_attn.o_proj.weight"] = d.weight(h, q_out)
        w[p + "mlp.gate_proj.weight"] = d.weight(inter, h)
        w[p + "mlp.up_proj.weight"] = d.weight(inter, h)
        w[p + "mlp.down_proj.weight"] = d.weight(h, inter)
        w[p + "input_layernorm.weight"] = d.norm(h)
        w[p + "post_attention_layernorm.weight"] = d.norm(h)
    w["model.norm.weight"] = d.norm(h)
    if not config.get("tie_word_embeddings", False):
        w["lm_head.weight"] = d.weight(v, h)
    return w


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from positions <= t (labels = input_ids)."""
    v = logits.shape[-1]
    return F.cross_entropy(logits[..., :-1, :].reshape(-1, v), input_ids[..., 1:].reshape(-1))
