"""The Promise engine against the cached-activation reference interpreter (same rules, every activation at hand):
on real models and on random DAGs drawn by hypothesis. Equality to 1e-6 in float64 checks promise chains, trees,
pre-promises and input aggregation at once."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamiclrp import ConstantRecorder, LRPConfig
from dynamiclrp.api import seed_relevance
from dynamiclrp.engine import Engine
from dynamiclrp.graph import Graph
from dynamiclrp.reference import ActivationRecorder, reference_propagate

EXAMPLES = int(os.environ.get("DYNAMICLRP_HYPOTHESIS_EXAMPLES", "60"))


def engine_and_reference(forward, x, config=None):
    """Run ``forward(x)`` once under the recorder; return (engine relevance, reference relevance, result)."""
    config = config or LRPConfig(epsilon=1e-9)
    with ActivationRecorder() as rec, ConstantRecorder() as consts:
        out = forward(x)
    seed = seed_relevance(out)
    graph = Graph.capture(out)
    leaf = next(n for n in graph.order if getattr(n, "variable", None) is x)
    result = Engine(graph, config, taps=[(leaf, 0)], constants=consts.calls).run(seed, slot=out.output_nr)
    assert set(result.propagations.values()) == {1}
    (ref,) = reference_propagate(out, [x], rec.values(), relevance=seed, config=config, constants=consts.calls)
    return result.taps[(leaf, 0)], ref, result


def _assert_close(a, b):
    scale = b.abs().max().clamp(min=1e-30)
    assert (a - b).abs().max() / scale < 1e-6, ((a - b).abs().max(), scale)


# ------------------------------------------------------------------------------------------ real models


def _gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def _bert():
    cfg = transformers.BertConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32,
                                  vocab_size=50, max_position_embeddings=16, num_labels=3)
    return transformers.BertForSequenceClassification(cfg).double().eval()


def _llama():
    cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=50, max_position_embeddings=16)
    return transformers.LlamaForCausalLM(cfg).double().eval()


@pytest.mark.parametrize("make", [_gpt2, _bert, _llama], ids=["gpt2", "bert", "llama"])
def test_transformers_match_reference(make):
    model = make()
    emb = model.get_input_embeddings()(torch.randint(0, 50, (2, 6))).detach().requires_grad_()
    ours, ref, result = engine_and_reference(lambda e: model(inputs_embeds=e).logits, emb)
    assert result.promises, "these graphs need promises"
    _assert_close(ours, ref)


def test_resnet_and_vit_match_reference():
    resnet = torchvision.models.resnet18().double().eval()
    ours, ref, _ = engine_and_reference(resnet, torch.randn(1, 3, 32, 32, dtype=torch.float64, requires_grad=True))
    _assert_close(ours, ref)
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=5).double().eval()
    nn.init.normal_(vit.heads.head.weight)
    ours, ref, _ = engine_and_reference(vit, torch.randn(2, 3, 16, 16, dtype=torch.float64, requires_grad=True))
    _assert_close(ours, ref)


# ------------------------------------------------------------------------------------------ random DAGs

D = 8
# name -> (number of operands, conservative under the rules?)
OPS = {
    "linear": (1, True), "linear_bias": (1, False), "relu": (1, True), "gelu": (1, True), "tanh": (1, True),
    "add": (2, True), "sub": (2, True), "mul": (2, True), "softmax": (1, False), "layernorm": (1, False),
    "catsplit": (2, True), "stack_unbind": (2, False), "bilinear": (2, False), "permute": (1, True),
    "residual": (1, True), "slice_pad": (1, False), "sum_expand": (1, True), "slice_write": (2, True),
    "slice_update": (2, True),
}


class RandomDAG(nn.Module):
    """A network built from a drawn program: each step applies an op to tensors drawn from all earlier ones."""

    def __init__(self, program, classes=3):
        super().__init__()
        self.program = program
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(D, D, dtype=torch.float64) / D ** 0.5)
                                        for _ in program)
        self.bias = nn.Parameter(torch.randn(D, dtype=torch.float64) * 0.1)
        self.head = nn.Parameter(torch.randn(D, classes, dtype=torch.float64))

    def forward(self, x):
        pool = [x]
        for k, (op, picks) in enumerate(self.program):
            a = pool[picks[0] % len(pool)]
            b = pool[picks[1] % len(pool)]
            w = self.weights[k]
            if op == "linear":
                y = a @ w
            elif op == "linear_bias":
                y = F.linear(a, w, self.bias)
            elif op == "relu":
                y = torch.relu(a)
            elif op == "gelu":
                y = F.gelu(a)
            elif op == "tanh":
                y = torch.tanh(a)
            elif op == "add":
                y = a + b
            elif op == "sub":
                y = a - b
            elif op == "mul":
                y = a * b
            elif op == "softmax":
                y = torch.softmax(a, -1)
            elif op == "layernorm":
                y = F.layer_norm(a, (D,))
            elif op == "catsplit":
                y = torch.cat([a, b], 1).split(D, 1)[picks[1] % 2] + a.split([3, D - 3], 1)[0].sum(1, keepdim=True)
            elif op == "stack_unbind":
                y = torch.stack([a, b], 0).unbind(0)[picks[1] % 2]
            elif op == "bilinear":
                y = (a.view(-1, 4, 2) @ b.view(-1, 2, 4)).flatten(1)[:, ::2]
            elif op == "permute":
                y = a.view(-1, 2, D // 2).transpose(1, 2).reshape(-1, D)
            elif op == "residual":
                y = a + torch.relu(a @ w) @ w.t()
            elif op == "slice_write":  # CopySlices overwriting part of a fresh tensor
                y = a * 1.0
                y[:, :3] = b[:, D - 3:]
            elif op == "slice_update":  # CopySlices adding into a view
                y = a * 1.0
                y[:, 2:6] += b[:, :4]
            elif op == "slice_pad":
                y = torch.cat([a[:, 2:], a[:, :2] * 0.5], 1)
            else:  # sum_expand
                y = a * 0.5 + a.sum(1, keepdim=True).expand(-1, D) / D
            pool.append(y)
        return pool[-1] @ self.head


programs = st.lists(st.tuples(st.sampled_from(sorted(OPS)), st.tuples(st.integers(0, 20), st.integers(0, 20))),
                    min_size=1, max_size=12)


@settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs, seed=st.integers(0, 2**16))
def test_random_dags_match_reference_and_conserve(program, seed):
    torch.manual_seed(seed)
    model = RandomDAG(program)
    x = torch.randn(2, D, dtype=torch.float64, requires_grad=True)
    ours, ref, result = engine_and_reference(model, x, LRPConfig(epsilon=1e-12))
    assert torch.isfinite(ours).all()
    _assert_close(ours, ref)
    if all(OPS[op][1] for op, _ in program):
        out = model(x)
        seed_total = seed_relevance(out).sum()
        assert torch.allclose(ours.sum(), seed_total, rtol=1e-5, atol=1e-8), (ours.sum(), seed_total)
