"""Make the LXT reference fixtures of ``tests/test_lxt_parity.py`` (run inside ``.venv-lxt``: scripts/lxt_fixtures.sh).

For each family a tiny random-weight model (float64, fixed seed, eval mode) is explained with LXT 2.1's efficient
AttnLRP and CP-LRP (Achtibat et al., ICML 2024; Ali et al., ICML 2022): LXT monkey-patches the model classes and the
relevance is Gradient x Input, ``R = x * d logit[target] / dx``. ``x`` is ``inputs_embeds`` (the output of the input
embedding module, so Gemma 3's sqrt(hidden) scale is included) for text models and the image (``pixel_values``) for
the ViTs. The seed of the backward pass is 1 (the starting relevance is the logit itself); a padded batch of two
explains the sum of one target logit per sample.

Each patch map is LXT's own where LXT ships one; otherwise (Mistral, HF ViT, BERT's CP-LRP, torchvision ViT's
AttnLRP) it is built from LXT's primitives exactly as the closest shipped map (recorded as ``lxt_map``). LXT's
patches are global to their classes, so each (family, preset) runs in its own process. What LXT does per op is
summarised in the docstring of tests/test_lxt_parity.py.

Usage: python scripts/lxt_fixtures.py [FAMILY ...]       (default: all; writes tests/fixtures/lxt/<family>.pt)
"""
from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "lxt"
SEED = 0
SEQ = 8
PRESETS = ("attnlrp", "cp_lrp")

_DECODER = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64)

# family -> (transformers config class, model class, constructor kwargs of the config, attention implementation).
# LXT patches SDPA as well as eager for every family here (HF's attention interface; BERT: LXT's own SDPA class), so
# the fixtures use HF's default, "sdpa"; the relevance is the same for both (tests/test_lxt_parity.py runs ours on
# both).
FAMILIES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=64, bos_token_id=0,
                  eos_token_id=0), "sdpa"),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(_DECODER), "sdpa"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(_DECODER), "sdpa"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(_DECODER, head_dim=8, query_pre_attn_scalar=8, sliding_window=4), "sdpa"),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(_DECODER, sliding_window=4), "sdpa"),
    "bert": ("BertConfig", "BertForSequenceClassification",
             dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=32, num_labels=5), "sdpa"),
    "vit": ("ViTConfig", "ViTForImageClassification",
            dict(image_size=16, patch_size=8, num_channels=3, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=4, num_labels=5), "sdpa"),
    # torchvision's ViT: the only vision transformer LXT 2.1 ships a map for (CP-LRP); "attn" is not a choice there
    "vit_torch": ("VisionTransformer", "torchvision.models.vision_transformer.VisionTransformer",
                  dict(image_size=16, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                       num_classes=5), "nn.MultiheadAttention"),
}
# padded batches of two: the attention mask (a softmax bias, fully masked rows) as each side handles it
FAMILIES["llama_padded"] = FAMILIES["llama"]
FAMILIES["bert_padded"] = FAMILIES["bert"]
PADDING = {"llama_padded": "left", "bert_padded": "right"}
# Qwen3 (q_norm/k_norm: RMSNorm on each head's query and key), last so that the other families keep their seeds
FAMILIES["qwen3"] = ("Qwen3Config", "Qwen3ForCausalLM", dict(_DECODER, head_dim=8), "sdpa")
N_PAD = 3
VISION = ("vit", "vit_torch")


def arch(family: str) -> str:
    """The transformers model type of a family (``llama_padded`` -> ``llama``)."""
    return family if family == "vit_torch" else family.split("_")[0]


def randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Weights with unit-scale activations (HF's std 0.02 makes every block nearly linear): matrices
    ``N(0, 1/fan_in)``, norm weights ``1 + N(0, 0.1^2)`` (Gemma's zero-centred ones ``N(0, 0.1^2)``), biases and
    the rest ``N(0, 0.1^2)``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            if p.dim() >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif (("norm" in name.lower() or name.split(".")[-2].startswith("ln")) and name.endswith("weight")
                  and "gemma" not in type(model).__name__.lower()):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def build(family: str):
    cfg_name, model_name, kwargs, attn = FAMILIES[family]
    seed = SEED + list(FAMILIES).index(family)
    torch.manual_seed(seed)
    if family == "vit_torch":
        from torchvision.models.vision_transformer import VisionTransformer

        config = None
        model = VisionTransformer(**kwargs).to(torch.float64).eval()
    else:
        import transformers

        config = getattr(transformers, cfg_name)(**kwargs, attn_implementation=attn)
        # the class from its modeling module, read at call time: LXT's BERT map replaces the module's classes
        modeling = importlib.import_module(f"transformers.models.{arch(family)}.modeling_{arch(family)}")
        model = getattr(modeling, model_name)(config).to(torch.float64).eval()
    gen = torch.Generator().manual_seed(seed)
    randomize(model, gen)
    mask = None
    if family in VISION:
        inputs = torch.randn(1, 3, 16, 16, generator=gen, dtype=torch.float64)
    elif family in PADDING:
        inputs = torch.randint(0, kwargs.get("vocab_size", 96), (2, SEQ), generator=gen)
        mask = torch.ones(2, SEQ, dtype=torch.long)
        if PADDING[family] == "left":
            mask[1, :N_PAD] = 0
        else:
            mask[1, -N_PAD:] = 0
    else:
        inputs = torch.randint(0, kwargs.get("vocab_size", 96), (1, SEQ), generator=gen)
    return model, config, inputs, mask


class _Identity(torch.nn.Module):
    """LXT's identity rule around an activation module (what LXT's MLP patches do)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        from lxt.efficient.rules import identity_rule_implicit

        return identity_rule_implicit(self.fn, x)


def _act_identity(module, name):
    setattr(module, name, _Identity(getattr(module, name)))


def _mha_attnlrp_forward(self, query, key, value, *args, **kwargs):
    """AttnLRP on ``nn.MultiheadAttention``: LXT's ``patch_attention`` divisions at its inputs."""
    from lxt.efficient.rules import divide_gradient

    return self.original_forward(divide_gradient(query, 4), divide_gradient(key, 4), divide_gradient(value, 2),
                                 *args, **kwargs)


def _no_instance_patch(model):
    return None


def apply_lxt(family: str, preset: str):
    """Patch the classes for LXT ``preset`` (before the model is built: LXT's BERT replaces classes); returns how
    the map was obtained and a function applying the per-instance part of the map to a built model."""
    from lxt.efficient import monkey_patch
    from lxt.efficient.patches import (
        dropout_forward,
        layer_norm_forward,
        patch_attention,
        patch_cp_attention,
        patch_method,
    )

    family = arch(family)
    if family in ("gpt2", "llama", "qwen2", "qwen3", "gemma3"):
        mod = __import__(f"lxt.efficient.models.{family}", fromlist=["x"])
        hf = __import__(f"transformers.models.{family}.modeling_{family}", fromlist=["x"])
        monkey_patch(hf, mod.attnLRP if preset == "attnlrp" else mod.cp_LRP)
        return "lxt", _no_instance_patch
    if family == "mistral":  # LXT's llama map on modeling_mistral (same architecture)
        from lxt.efficient.patches import cp_gated_mlp_forward, gated_mlp_forward, rms_norm_forward
        from transformers.models.mistral import modeling_mistral as hf

        mlp = gated_mlp_forward if preset == "attnlrp" else cp_gated_mlp_forward
        monkey_patch(hf, {hf.MistralMLP: partial(patch_method, mlp),
                          hf.MistralRMSNorm: partial(patch_method, rms_norm_forward),
                          torch.nn.Dropout: partial(patch_method, dropout_forward),
                          hf: patch_attention if preset == "attnlrp" else patch_cp_attention})
        return "built from lxt primitives: lxt.efficient.models.llama map on modeling_mistral", _no_instance_patch
    if family == "vit":  # LXT's HF attention patch + LayerNorm/Dropout patches + identity on the MLP activation
        from transformers.models.vit import modeling_vit as hf

        monkey_patch(hf, {torch.nn.LayerNorm: partial(patch_method, layer_norm_forward),
                          torch.nn.Dropout: partial(patch_method, dropout_forward),
                          hf: patch_attention if preset == "attnlrp" else patch_cp_attention})

        def instance_patch(model):
            for layer in model.vit.encoder.layer:
                _act_identity(layer.intermediate, "intermediate_act_fn")

        return ("built from lxt primitives: patch_attention/patch_cp_attention on modeling_vit, nn.LayerNorm -> "
                "layer_norm_forward, Dropout -> identity, identity_rule_implicit on ViTIntermediate's "
                "activation"), instance_patch
    if family == "vit_torch":
        import lxt.efficient.models.vit_torch as mod
        from torchvision.models import vision_transformer as tv

        if preset == "cp_lrp":
            monkey_patch(tv, mod.cp_LRP)
            return "lxt", _no_instance_patch
        monkey_patch(tv, {tv.nn.GELU: mod.cp_LRP[tv.nn.GELU], tv.nn.LayerNorm: mod.cp_LRP[tv.nn.LayerNorm],
                          tv.nn.MultiheadAttention: partial(patch_method, _mha_attnlrp_forward, keep_original=True)})
        return ("built from lxt primitives: lxt.efficient.models.vit_torch.cp_LRP with nn.MultiheadAttention's "
                "query, key, value inputs divide_gradient(4, 4, 2) (= patch_attention's rule before the "
                "in-projection, which is linear) instead of stop_gradient on query and key"), _no_instance_patch
    if family == "bert":
        if preset == "attnlrp":
            import lxt.efficient.models.bert as mod
            from transformers.models.bert import modeling_bert as hf

            monkey_patch(hf, mod.attnLRP)
            return "lxt", _no_instance_patch
        from lxt.efficient.rules import stop_gradient
        from transformers.models.bert import modeling_bert as hf

        monkey_patch(hf, {torch.nn.LayerNorm: partial(patch_method, layer_norm_forward),
                          torch.nn.Dropout: partial(patch_method, dropout_forward)})

        def instance_patch(model):
            for layer in model.bert.encoder.layer:
                att = layer.attention.self
                att.query.register_forward_hook(lambda m, i, o: stop_gradient(o))
                att.key.register_forward_hook(lambda m, i, o: stop_gradient(o))
                _act_identity(layer.intermediate, "intermediate_act_fn")
            _act_identity(model.bert.pooler, "activation")

        return ("built from lxt primitives: stock modeling_bert, query/key projections stop_gradient (CP attention), "
                "nn.LayerNorm -> layer_norm_forward, Dropout -> identity, identity_rule_implicit on the "
                "intermediate and pooler activations"), instance_patch
    raise ValueError(f"unknown family {family!r}; choose from {sorted(FAMILIES)}")


def model_inputs(family, model, inputs, mask=None):
    if family == "vit":
        x = inputs.clone().requires_grad_(True)
        return x, dict(pixel_values=x)
    if family == "vit_torch":
        x = inputs.clone().requires_grad_(True)
        return x, dict(x=x)
    x = model.get_input_embeddings()(inputs).detach().requires_grad_(True)
    extra = {} if arch(family) in ("bert", "vit") else dict(use_cache=False)
    if mask is not None:
        extra["attention_mask"] = mask
    return x, dict(inputs_embeds=x, **extra)


def _logits(out):
    return out if isinstance(out, torch.Tensor) else out.logits


def pick_target(logits):
    """Arg-max class (classifiers) or arg-max token at the last position (language models); one per sample (a
    list) when the batch has more than one."""
    if logits.dim() == 2:
        per = [int(row.argmax()) for row in logits]
    else:
        per = [(logits.shape[1] - 1, int(row[-1].argmax())) for row in logits]
    return per[0] if len(per) == 1 else per


def select(logits, target):
    """The sum of the target logits (one per sample)."""
    targets = target if isinstance(target, list) else [target]
    return sum(logits[b, t] if isinstance(t, int) else logits[b, t[0], t[1]] for b, t in enumerate(targets))


def run_one(family: str, preset: str, path: str) -> None:
    """Child process: build, patch with LXT, explain; save a partial result to ``path``."""
    torch.set_num_threads(1)
    model, config, inputs, mask = build(family)
    x0, kw0 = model_inputs(family, model, inputs, mask)
    ref_logits = _logits(model(**kw0))
    target = pick_target(ref_logits)
    select(ref_logits, target).backward()
    how, instance_patch = apply_lxt(family, preset)
    model = build(family)[0]
    instance_patch(model)
    x, kw = model_inputs(family, model, inputs, mask)
    logits = _logits(model(**kw))
    assert torch.allclose(logits, ref_logits, rtol=1e-12, atol=1e-12), "LXT's patches changed the forward pass"
    select(logits, target).backward()
    relevance = (x * x.grad).detach()
    gxi = (x0 * x0.grad).detach()
    assert (relevance - gxi).abs().max() > 1e-3 * gxi.abs().max(), "LXT's patches had no effect"
    torch.save(dict(relevance=relevance, lxt_map=how, target=target, logits=logits.detach(), explained=x.detach(),
                    gradient_x_input=gxi), path)


def make(family: str) -> Path:
    import lxt
    import transformers

    model, config, inputs, mask = build(family)
    parts = {}
    for preset in PRESETS:
        with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as f:
            tmp = f.name
        subprocess.run([sys.executable, __file__, "--one", family, preset, tmp], check=True)
        parts[preset] = torch.load(tmp)
        Path(tmp).unlink()
    a, c = parts["attnlrp"], parts["cp_lrp"]
    assert a["target"] == c["target"] and torch.equal(a["logits"], c["logits"])
    cfg_name, model_name, kwargs, attn = FAMILIES[family]
    fixture = dict(
        family=family,
        arch=arch(family),
        config_class=cfg_name,
        model_class=model_name,
        config_kwargs=kwargs,
        config=json.loads(config.to_json_string()) if config is not None else dict(kwargs),
        attn_implementation=attn,
        state_dict={k: v.clone() for k, v in model.state_dict().items()},
        inputs=inputs,
        attention_mask=mask,
        padding=PADDING.get(family),
        explained_tensor=("pixel_values" if family in VISION
                          else "inputs_embeds = model.get_input_embeddings()(input_ids)"),
        explained=a["explained"],
        target=a["target"],
        logits=a["logits"],
        relevance={p: parts[p]["relevance"] for p in PRESETS},
        gradient_x_input=a["gradient_x_input"],
        lxt_map={p: parts[p]["lxt_map"] for p in PRESETS},
        library="torchvision" if family == "vit_torch" else "transformers",
        versions=dict(lxt=getattr(lxt, "__version__", "2.1"), transformers=transformers.__version__,
                      torch=str(torch.__version__)),
        seed=SEED + list(FAMILIES).index(family),
    )
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"{family}.pt"
    torch.save(fixture, out)
    return out


def main(argv: list[str]) -> None:
    if argv[:1] == ["--one"]:
        run_one(*argv[1:4])
        return
    for family in argv or list(FAMILIES):
        out = make(family)
        fx = torch.load(out)
        sums = {p: float(r.sum()) for p, r in fx["relevance"].items()}
        print(f"{family}: {out.relative_to(ROOT)} {out.stat().st_size // 1024} KB, target {fx['target']}, "
              f"logit {float(select(fx['logits'], fx['target'])):.4f}, sum R {sums}")


if __name__ == "__main__":
    main(sys.argv[1:])
