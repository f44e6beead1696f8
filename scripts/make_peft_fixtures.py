"""Write Hugging Face PEFT LoRA directories, and the logits PEFT's forward gives with them.

Regenerate (deterministic; a few seconds):

    /usr/bin/python3 scripts/make_peft_fixtures.py

The `peft` package is not installable here (no PyPI), so this script writes exactly what PEFT's
`PeftModel.save_pretrained` writes for a LoRA adapter, as read from PEFT's source (main at
commit 5d602fd, version 0.20.1.dev0: peft/peft_model.py save_pretrained, peft/config.py
save_pretrained / to_dict, peft/tuners/lora/config.py LoraConfig, peft/utils/save_and_load.py
get_peft_model_state_dict, peft/utils/other.py ModulesToSaveWrapper):
  adapter_config.json        every LoraConfig field (runtime_config removed), json.dumps(indent=2,
                             sort_keys=True), no trailing newline; inference_mode true.
  adapter_model.safetensors  `base_model.model.<module>.lora_A.weight` [r, in] and
                             `.lora_B.weight` [out, r]; modules_to_save as
                             `base_model.model.<module>.<param>` (the trained copy); metadata
                             {"format": "pt"}; tensors sorted by name (all F32), as the
                             safetensors library orders them.
  README.md                  PEFT's model card starts with YAML front matter (base_model,
                             library_name: peft); only its head is reproduced.
Which modules get LoRA follows PEFT's check_target_module_exists for each config (written out
per fixture below, so the TypeScript matcher is checked against an explicit list).

reference.json holds logits computed the way PEFT's LoRA layer runs at inference (unfused:
y = base(x) + scaling * lora_B(lora_A(x)), scaling = alpha / r, or alpha / sqrt(r) with
use_rslora; Conv1D the same, fan_in_fan_out only matters when merging), in float64 from the
float32 tensors read back from the written files, with scripts/torch_reference.py's models.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
import torch_reference as ref  # noqa: E402
from make_fixtures import f32_short, to_f32_list, write_json  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "test", "fixtures", "peft")
PEFT_VERSION = "0.20.1.dev0@5d602fdbf"


def lora_config(**fields) -> dict:
    """LoraConfig.to_dict() at PEFT main: every field with its default, then `fields`."""
    cfg = {
        "alora_invocation_tokens": None,
        "alpha_pattern": {},
        "arrow_config": None,
        "auto_mapping": None,
        "base_model_name_or_path": None,
        "bias": "none",
        "corda_config": None,
        "ensure_weight_tying": False,
        "eva_config": None,
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "kasa_config": None,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": 8,
        "lora_bias": False,
        "lora_dropout": 0.0,
        "lora_ga_config": None,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "monteclora_config": None,
        "peft_type": "LORA",
        "peft_version": PEFT_VERSION,
        "qalora_group_size": 16,
        "r": 8,
        "rank_pattern": {},
        "revision": None,
        "target_modules": None,
        "target_parameters": None,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": None,
        "use_bdlora": None,
        "use_dora": False,
        "use_qalora": False,
        "use_rslora": False,
        "velora_config": None,
    }
    unknown = set(fields) - set(cfg)
    if unknown:
        raise KeyError(f"not LoraConfig fields: {sorted(unknown)}")
    cfg.update(fields)
    return cfg


def pattern_value(pattern: dict, module: str):
    """PEFT's get_pattern_key: first key k (in order) with re.match(rf"(.*\\.)?({k})$", module)."""
    import re

    for k in pattern:
        if re.match(rf"(.*\.)?({k})$", module):
            return pattern[k]
    return None


def write_peft_dir(path: str, cfg: dict, tensors: dict) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True))
    ordered = {k: tensors[k] for k in sorted(tensors)}
    ref.write_safetensors(os.path.join(path, "adapter_model.safetensors"), ordered, metadata={"format": "pt"})
    with open(os.path.join(path, "README.md"), "w") as f:
        f.write(f"---\nbase_model: {cfg['base_model_name_or_path']}\nlibrary_name: peft\n---\n\n# Model Card for Model ID\n")


def make_lora(g: torch.Generator, weights: dict, config: dict, modules: list, cfg: dict, b_std: float = 0.05) -> dict:
    """Random trained-looking factors: A ~ U(±1/sqrt(in)) (PEFT's Kaiming init), B ~ N(0, b_std)."""
    tensors = {}
    for m in modules:
        fan_in, fan_out = ref.site_in_out(config, weights, m)
        r = pattern_value(cfg["rank_pattern"], m) or cfg["r"]
        bound = 1 / math.sqrt(fan_in)
        tensors[f"base_model.model.{m}.lora_A.weight"] = (torch.rand((r, fan_in), generator=g, dtype=torch.float32) * 2 - 1) * bound
        tensors[f"base_model.model.{m}.lora_B.weight"] = torch.randn((fan_out, r), generator=g, dtype=torch.float32) * b_std
    return tensors


def peft_proj(weights: dict, config: dict, cfg: dict, lora: dict):
    """PEFT's LoRA Linear forward at inference: base(x) + scaling * lora_B(lora_A(x))."""
    base = ref.conv1d_proj(weights) if config["model_type"] == "gpt2" else ref.linear_proj(weights)

    def proj(site: str, x: torch.Tensor) -> torch.Tensor:
        y = base(site, x)
        a = lora.get(f"base_model.model.{site}.lora_A.weight")
        if a is None:
            return y
        b = lora[f"base_model.model.{site}.lora_B.weight"]
        r = a.shape[0]
        alpha = pattern_value(cfg["alpha_pattern"], site) or cfg["lora_alpha"]
        scaling = alpha / math.sqrt(r) if cfg["use_rslora"] else alpha / r
        return y + (x @ a.t() @ b.t()) * scaling

    return proj


def reference(config: dict, weights: dict, cfg: dict, adapter_dir: str, input_ids: list, greedy_steps: int) -> dict:
    """Logits of `input_ids` (rows) with the adapter, read back from disk; greedy ids of row 0."""
    disk = {k: v.to(torch.float64) for k, v in ref.read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors")).items()}
    w = dict(weights)
    for k, v in disk.items():
        if ".lora_" not in k:
            w[k[len("base_model.model."):]] = v  # modules_to_save: the trained copy replaces the module's tensor
    lora = {k: v for k, v in disk.items() if ".lora_" in k}
    proj = peft_proj(w, config, cfg, lora)
    ids = torch.tensor(input_ids)
    logits = ref.forward(w, config, ids, proj=proj)
    out = {"input_ids": input_ids, "logits": to_f32_list(logits)}
    if greedy_steps:
        seq = list(input_ids[0])
        margins = []
        for _ in range(greedy_steps):
            last = ref.forward(w, config, torch.tensor([seq]), proj=proj)[0, -1]
            top2 = last.topk(2).values
            margins.append((top2[0] - top2[1]).item())
            seq.append(int(last.argmax().item()))
        out["greedy"] = {"prompt_ids": list(input_ids[0]), "generated_ids": seq[len(input_ids[0]):], "min_top2_logit_margin": f32_short(min(margins))}
    return out


def load_model(rel: str):
    d = os.path.join(REPO, rel)
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    weights = {k: v.to(torch.float64) for k, v in ref.read_safetensors(os.path.join(d, "model.safetensors")).items()}
    return config, weights


def fixture_stories(g: torch.Generator) -> dict:
    config, weights = load_model("models/stories260K")
    cfg = lora_config(
        base_model_name_or_path="models/stories260K",
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        layers_to_transform=[0, 1, 2, 4],
        layers_pattern="layers",
        rank_pattern={"down_proj": 2},
        alpha_pattern={"model.layers.1.self_attn.q_proj": 2},
        lora_dropout=0.05,
    )
    # check_target_module_exists: suffix match on the list, then the layer index after ".layers.".
    modules = [f"model.layers.{i}.{m}" for i in [0, 1, 2, 4] for m in ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]]
    d = os.path.join(OUT, "stories260K-lora")
    # Strong enough that greedy text differs from the base model's (so tests comparing text see the adapter).
    write_peft_dir(d, cfg, make_lora(g, {k: v.float() for k, v in weights.items()}, config, modules, cfg, b_std=0.2))
    r = reference(config, weights, cfg, d, [[1, 403, 407, 261, 378]], greedy_steps=20)
    return {"dir": "stories260K-lora", "model": "models/stories260K", "targets": modules, **r}


def fixture_gpt2(g: torch.Generator) -> dict:
    config, weights = load_model("test/fixtures/models/gpt2")
    cfg = lora_config(
        base_model_name_or_path="test/fixtures/models/gpt2",
        r=2,
        lora_alpha=4,
        target_modules=["c_attn", "c_proj"],
        fan_in_fan_out=True,
        use_rslora=True,
    )
    # Suffix rule: ".c_proj" matches both attn.c_proj and mlp.c_proj.
    modules = [f"transformer.h.{i}.{m}" for i in range(config["n_layer"]) for m in ["attn.c_attn", "attn.c_proj", "mlp.c_proj"]]
    d = os.path.join(OUT, "gpt2-lora")
    write_peft_dir(d, cfg, make_lora(g, {k: v.float() for k, v in weights.items()}, config, modules, cfg))
    with open(os.path.join(REPO, "test/fixtures/models/gpt2/reference.json")) as f:
        ids = json.load(f)["input_ids"]
    r = reference(config, weights, cfg, d, ids, greedy_steps=0)
    return {"dir": "gpt2-lora", "model": "test/fixtures/models/gpt2", "targets": modules, **r}


def fixture_saved(g: torch.Generator) -> dict:
    config, weights = load_model("test/fixtures/models/llama-gqa")
    layers = config["num_hidden_layers"]
    linear = [f"model.layers.{i}.{m}" for i in range(layers) for m in
              ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]]
    # "all-linear" is saved as the names it resolved to (every Linear but the output head; fewer
    # than 20, so PEFT keeps full names). exclude_modules and modules_to_save filter at match time.
    cfg = lora_config(
        base_model_name_or_path="test/fixtures/models/llama-gqa",
        r=3,
        lora_alpha=6,
        target_modules=linear,
        exclude_modules=["down_proj"],
        modules_to_save=["lm_head", "norm"],
        lora_dropout=0.1,
    )
    modules = [m for m in linear if not m.endswith(".down_proj")]
    f32 = {k: v.float() for k, v in weights.items()}
    tensors = make_lora(g, f32, config, modules, cfg)
    # ModulesToSaveWrapper copies: "norm" matches every module whose name ends with it (plain endswith).
    saved = ["lm_head.weight", "model.norm.weight"] + [f"model.layers.{i}.{n}.weight" for i in range(layers) for n in ["input_layernorm", "post_attention_layernorm"]]
    for p in saved:
        tensors[f"base_model.model.{p}"] = f32[p] + torch.randn(f32[p].shape, generator=g, dtype=torch.float32) * 0.02
    d = os.path.join(OUT, "llama-saved")
    write_peft_dir(d, cfg, tensors)
    with open(os.path.join(REPO, "test/fixtures/models/llama-gqa/reference.json")) as f:
        ids = json.load(f)["input_ids"]
    r = reference(config, weights, cfg, d, ids, greedy_steps=0)
    return {"dir": "llama-saved", "model": "test/fixtures/models/llama-gqa", "targets": modules, "saved": saved, **r}


def main() -> None:
    torch.set_default_dtype(torch.float64)
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(15)
    fixtures = [fixture_stories(g), fixture_gpt2(g), fixture_saved(g)]
    write_json(os.path.join(OUT, "reference.json"), {f["dir"]: f for f in fixtures})
    for f in fixtures:
        print(json.dumps({"dir": f["dir"], "modules": len(f["targets"]), **({"greedy": f["greedy"]["generated_ids"]} if "greedy" in f else {})}))


if __name__ == "__main__":
    main()
