"""Parameters by reachability: an operand is a parameter (or constant) when the subgraph behind it reaches no
explained input, whatever ops it went through (issue 12, item 1). Before, only weights seen through shape ops
counted, so a pruned, LoRA-merged, standardised, scaled or spectral-normed weight took half the relevance of its
layer as if it were an activation.

The oracle: on bias-free ReLU nets the epsilon rule (epsilon -> 0) equals gradient x input exactly, and the input
relevance sums to the explained logit. Also: relevance of parameters requested in ``propagate`` (hand-computed),
and ``torch.dot`` / ``torch.vdot`` rules.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune  # noqa: F401  (registers torch.nn.utils.prune)

from dynamiclrp import LRP, LRPConfig, propagate
from dynamiclrp.graph import Graph

DT = torch.float64
CFG = LRPConfig(epsilon=1e-12)
TOL = 1e-8


def mlp(bias=False):
    return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.ReLU(), nn.Linear(8, 8, bias=bias), nn.ReLU(),
                         nn.Linear(8, 3, bias=bias)).to(DT)


def grad_x_input(model, x, target):
    x = x.clone().requires_grad_(True)
    out = model(x)
    g, = torch.autograd.grad(out[:, target].sum(), x)
    return (g * x).detach(), out[:, target].detach()


def assert_gradient_x_input(model, x, target=1):
    """LRP-epsilon(1e-12) of ``model`` equals gradient x input and sums to the logit, per sample."""
    rel = LRP(model, CFG).attribute(x, target=target)
    ref, logit = grad_x_input(model, x, target)
    scale = ref.abs().max()
    assert (rel - ref).abs().max() <= TOL * scale, (rel - ref).abs().max()
    total = rel.flatten(1).sum(1)
    torch.testing.assert_close(total / logit, torch.ones_like(logit), rtol=1e-8, atol=0)
    return rel


class MergedLoRA(nn.Module):
    """``y = x (W + B A)^T``: a LoRA adapter merged into the weight in the forward pass."""

    def __init__(self, n_in, n_out, rank=2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in, dtype=DT) / n_in ** 0.5)
        self.lora_a = nn.Parameter(torch.randn(rank, n_in, dtype=DT) / n_in ** 0.5)
        self.lora_b = nn.Parameter(torch.randn(n_out, rank, dtype=DT) / rank ** 0.5)

    def forward(self, x):
        return F.linear(x, self.weight + self.lora_b @ self.lora_a)


class ScaledLinear(nn.Module):
    """``y = x (W * scale)^T`` with ``scale`` a Python number or a parameter."""

    def __init__(self, n_in, n_out, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in, dtype=DT) / n_in ** 0.5)
        self.scale = scale

    def forward(self, x):
        return F.linear(x, self.weight * self.scale)


class WSConv(nn.Conv2d):
    """Hand-written weight standardisation (as in BiT): ``W' = (W - mean W) / sqrt(var W + eps)`` per filter."""

    def forward(self, x):
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return F.conv2d(x, (w - mean) / torch.sqrt(var + 1e-6), None, self.stride, self.padding)


def lora_mlp():
    return nn.Sequential(MergedLoRA(6, 8), nn.ReLU(), MergedLoRA(8, 8), nn.ReLU(), MergedLoRA(8, 3))


def scaled_mlp(scale):
    return nn.Sequential(ScaledLinear(6, 8, scale), nn.ReLU(), ScaledLinear(8, 8, scale), nn.ReLU(),
                         ScaledLinear(8, 3, scale))


def conv_net(conv):
    """Two bias-free convolutions with ReLU, an average pool (of non-negative values: the additive rule is exact
    there) and a linear head."""
    return nn.Sequential(conv(2, 4), nn.ReLU(), conv(4, 4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 2 * 2, 3, bias=False)).to(DT).eval()


def test_pruned_layers_explain_like_gradient_x_input():
    model = mlp()
    for layer in (model[0], model[2], model[4]):
        torch.nn.utils.prune.random_unstructured(layer, "weight", amount=0.4)
    assert_gradient_x_input(model, torch.randn(3, 6, dtype=DT))


def test_merged_lora_explains_like_gradient_x_input():
    assert_gradient_x_input(lora_mlp(), torch.randn(3, 6, dtype=DT))


@pytest.mark.parametrize("dora", [False, True])
def test_peft_lora_and_dora_explain_like_gradient_x_input(dora):
    """peft adapters as trained (not merged): LoRA adds a branch ``s * B A x``; DoRA also rescales by
    ``magnitude / ||W + s B A||``, a factor of parameters only. With the signed add rule, gradient x input."""
    peft = pytest.importorskip("peft")
    base = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False)).to(DT)
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["0", "2"], use_dora=dora,
                                                      lora_dropout=0.0, init_lora_weights=False)).to(DT).eval()
    x = torch.randn(3, 6, dtype=DT)
    rel = LRP(model, LRPConfig(epsilon=1e-12, add_rule="z")).attribute(x, target=1)
    ref, logit = grad_x_input(model, x, 1)
    assert (rel - ref).abs().max() <= 1e-8 * ref.abs().max()
    torch.testing.assert_close(rel.sum(1), logit, rtol=1e-8, atol=0)


@pytest.mark.parametrize("scale", [1.0, 0.37, "parameter"])
def test_scaled_weights_explain_like_gradient_x_input(scale):
    if scale == "parameter":
        scale = nn.Parameter(torch.tensor(1.7, dtype=DT))
    assert_gradient_x_input(scaled_mlp(scale), torch.randn(3, 6, dtype=DT))


@pytest.mark.parametrize("name", ["StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"])
def test_timm_weight_standardised_convs_explain_like_gradient_x_input(name):
    """BiT / ResNetV2 (``StdConv2d``) and NFNets (``ScaledStdConv2d``: a learned gain too); the ``Same`` variants
    with stride 2 pad dynamically."""
    import timm.layers

    cls = getattr(timm.layers, name)
    same = name.endswith("Same")

    def conv(c_in, c_out):
        layer = cls(c_in, c_out, 3, stride=2, bias=False) if same else cls(c_in, c_out, 3, padding=1, bias=False)
        if hasattr(layer, "gain"):
            nn.init.uniform_(layer.gain, 0.5, 1.5)
        return layer

    assert_gradient_x_input(conv_net(conv), torch.randn(2, 2, 7, 7, dtype=DT), target=0)


def test_hand_written_weight_standardisation_explains_like_gradient_x_input():
    net = conv_net(lambda c_in, c_out: WSConv(c_in, c_out, 3, padding=1, bias=False))
    assert_gradient_x_input(net, torch.randn(2, 2, 7, 7, dtype=DT), target=2)


@pytest.mark.parametrize("requires_grad", [True, False])
def test_functional_call_with_plain_tensors(requires_grad):
    model = mlp()
    params = {k: v.detach().clone().requires_grad_(requires_grad) for k, v in model.named_parameters()}

    def run(x):
        return torch.func.functional_call(model, params, (x,))

    assert_gradient_x_input(run, torch.randn(3, 6, dtype=DT))


@pytest.mark.parametrize("norm", ["parametrizations", "legacy"])
@pytest.mark.parametrize("train", [False, True])
def test_spectral_norm_explains_like_the_frozen_normalised_weight(norm, train):
    sn = nn.utils.parametrizations.spectral_norm if norm == "parametrizations" else nn.utils.spectral_norm
    model = mlp()
    for i in (0, 2):
        model[i] = sn(model[i])
    model.train(train)
    x = torch.randn(3, 6, dtype=DT)
    with torch.no_grad():  # power iteration (train mode) runs now; the explained forward reuses its u, v
        model(x)
    model.eval()
    rel = assert_gradient_x_input(model, x)
    frozen = mlp()
    with torch.no_grad():
        for i in (0, 2, 4):
            frozen[i].weight.copy_(model[i].weight)
    frozen.requires_grad_(False)
    torch.testing.assert_close(rel, LRP(frozen, CFG).attribute(x, target=1), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("norm", ["parametrizations", "legacy"])
def test_spectral_norm_explained_in_train_mode_is_conserved(norm):
    """In train mode the power iteration runs inside the explained forward (under no_grad); the layer is still a
    weight: bias-free, the input relevance sums to the logit."""
    sn = nn.utils.parametrizations.spectral_norm if norm == "parametrizations" else nn.utils.spectral_norm
    model = nn.Sequential(sn(nn.Linear(6, 8, bias=False)), nn.ReLU(), sn(nn.Linear(8, 3, bias=False))).to(DT)
    expl = LRP(model.train(), CFG).explain(torch.randn(2, 6, dtype=DT), target=1)
    torch.testing.assert_close(expl.relevance[0].sum(1), expl.output[:, 1], rtol=1e-8, atol=0)


def test_biased_pruned_layers_keep_relevance_with_the_activations():
    """With biases the oracle is gone, but the weights must still take nothing: the same layer with the pruned
    weight frozen into an ordinary Linear explains identically."""
    model = mlp(bias=True)
    torch.nn.utils.prune.l1_unstructured(model[2], "weight", amount=0.5)
    plain = mlp(bias=True)
    plain.load_state_dict({k.replace("_orig", ""): v for k, v in model.state_dict().items() if "mask" not in k})
    with torch.no_grad():
        plain[2].weight.copy_(model[2].weight)
    x = torch.randn(3, 6, dtype=DT)
    cfg = LRPConfig(epsilon=1e-6)
    torch.testing.assert_close(LRP(model, cfg).attribute(x, target=0), LRP(plain, cfg).attribute(x, target=0))


# ------------------------------------------------------------------------------------------------ sources


def test_intermediate_tap_keeps_an_earlier_branch_an_activation():
    """propagate(out, [hidden]): a stream that branched off before ``hidden`` still reaches the input, so the
    product ``hidden * a`` of two activations (a SwiGLU-like gate) is split evenly."""
    w1, w2 = nn.Parameter(torch.randn(5, 4, dtype=DT)), nn.Parameter(torch.randn(5, 4, dtype=DT))
    x = torch.randn(2, 4, dtype=DT, requires_grad=True)
    a = x @ w1.t()
    hidden = torch.relu(x @ w2.t())
    out = hidden * a
    rel, = propagate(out, [hidden], relevance=out.detach(), config=CFG)
    torch.testing.assert_close(rel, 0.5 * (hidden * a).detach())


def test_weight_through_arbitrary_ops_is_a_parameter_and_default_sources():
    w = nn.Parameter(torch.randn(5, 4, dtype=DT))
    x = torch.randn(2, 4, dtype=DT, requires_grad=True)
    out = x @ (torch.tanh(w) * 2.0 + w.exp()).t()
    graph = Graph.capture(out)  # no sources declared: every non-Parameter leaf (x) is one
    assert not graph.is_parameter_edge(graph.root, 0)
    assert graph.is_parameter_edge(graph.root, 1)
    graph.set_sources([graph.edges[graph.root][1][0]])  # a tap on the weight side makes it the activation
    assert graph.is_parameter_edge(graph.root, 0)
    assert not graph.is_parameter_edge(graph.root, 1)


class TiedLM(nn.Module):
    """Token ids -> embedding -> linear -> ReLU -> output head tied to the embedding table (bias-free)."""

    def __init__(self, vocab=11, hidden=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden).to(DT)
        self.lin = nn.Linear(hidden, hidden, bias=False).to(DT)

    def forward(self, ids=None, inputs_embeds=None):
        e = self.emb(ids) if inputs_embeds is None else inputs_embeds
        return F.linear(torch.relu(self.lin(e)), self.emb.weight)


@pytest.mark.parametrize("plain_table", [False, True])
def test_token_ids_explain_at_the_lookup_and_the_tied_head_stays_a_weight(plain_table):
    """The lookup of the ids is the input; its table -- also the output head -- is a weight, even when it is a
    plain tensor that requires grad (``functional_call``): relevance at the lookup is gradient x embedding."""
    model = TiedLM()
    ids = torch.tensor([[3, 1, 7, 2]])
    run = model
    if plain_table:
        params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}

        def run(ids=None, inputs_embeds=None):
            return torch.func.functional_call(model, params, (ids, inputs_embeds))

    expl = LRP(run, CFG).explain(ids, target=(3, 5))
    emb = model.emb(ids).detach().requires_grad_(True)
    out = run(inputs_embeds=emb)
    g, = torch.autograd.grad(out[0, 3, 5], emb)
    torch.testing.assert_close(expl.embedding_relevance[0], (g * emb).detach(), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(expl.relevance[0].sum(), out[0, 3, 5].detach())


# ------------------------------------------------------------------------------------------------ parameters


@pytest.mark.parametrize("x_requires_grad", [True, False])
def test_parameter_relevance_is_the_epsilon_rule_by_hand(x_requires_grad):
    """``R_W[j, i] = W[j, i] x_i R_j / z_j`` and ``R_b[j] = b_j R_j / z_j`` for ``z = W x + b``."""
    lin = nn.Linear(3, 2).to(DT)
    x = torch.randn(1, 3, dtype=DT, requires_grad=x_requires_grad)
    z = lin(x)
    r = torch.tensor([[0.7, -1.3]], dtype=DT)
    rw, rb = propagate(z, [lin.weight, lin.bias], relevance=r, config=CFG)
    s = (r / z).detach()[0]
    expected_w = torch.stack([lin.weight[j] * x[0] * s[j] for j in range(2)]).detach()
    assert rw.abs().min() > 0
    torch.testing.assert_close(rw, expected_w)
    torch.testing.assert_close(rb, (lin.bias * s).detach())


def test_parameter_relevance_of_a_two_layer_net_on_plain_data():
    """The input does not require grad (the usual way to call a model): relevance still reaches both layers'
    weights, as the epsilon rule computed layer by layer by hand."""
    l1, l2 = nn.Linear(4, 5, bias=False).to(DT), nn.Linear(5, 2, bias=False).to(DT)
    x = torch.randn(1, 4, dtype=DT)
    h = torch.relu(l1(x))
    z = l2(h)
    r = torch.tensor([[0.0, 1.0]], dtype=DT) * z.detach()
    r1, r2 = propagate(z, [l1.weight, l2.weight], relevance=r, config=CFG)
    s2 = (r / z).detach()[0]
    torch.testing.assert_close(r2, (l2.weight * h[0] * s2[:, None]).detach())
    rh = h.detach()[0] * (l2.weight.detach().t() @ s2)  # relevance of h; relu passes it to the pre-activation
    a = l1(x).detach()[0]
    s1 = torch.where(a > 0, rh / a, torch.zeros_like(a))
    torch.testing.assert_close(r1, (l1.weight * x[0] * s1[:, None]).detach())
    torch.testing.assert_close(r1.sum(), z[0, 1].detach())  # bias-free: conserved into the first layer


@pytest.mark.parametrize("kind", ["linear3d", "conv"])
def test_parameter_relevance_is_conserved_on_plain_data(kind):
    """Weight and bias of one layer on data that does not require grad: ``R_W + R_b`` sums to the output's
    relevance (epsilon rule, epsilon -> 0), per output unit for the linear layer."""
    if kind == "conv":
        layer, x = nn.Conv2d(2, 3, 3).to(DT), torch.randn(2, 2, 5, 5, dtype=DT)
    else:
        layer, x = nn.Linear(4, 3).to(DT), torch.randn(2, 5, 4, dtype=DT)
    z = layer(x)
    r = torch.randn_like(z)
    rw, rb = propagate(z, [layer.weight, layer.bias], relevance=r, config=CFG)
    if kind == "linear3d":
        torch.testing.assert_close(rw.sum(1) + rb, r.sum((0, 1)))
    torch.testing.assert_close(rw.sum() + rb.sum(), r.sum())


def test_parameter_relevance_reaches_both_lora_factors():
    """``z = x (W + B A)^T``: the merged weight's relevance is split between ``W`` and ``B A`` by the add rule and
    ``B A`` (a product of two parameters) gives each factor half; bias-free, it all sums to the output relevance."""
    layer = MergedLoRA(5, 4)
    x = torch.randn(3, 5, dtype=DT, requires_grad=True)
    z = layer(x)
    rw, rb, ra = propagate(z, [layer.weight, layer.lora_b, layer.lora_a], relevance=z.detach(), config=CFG)
    assert rb.abs().sum() > 0 and ra.abs().sum() > 0
    torch.testing.assert_close(rb.sum(), ra.sum())
    torch.testing.assert_close(rw.sum() + rb.sum() + ra.sum(), z.detach().sum())


def test_reference_propagator_uses_the_same_sources():
    """The cached-activation reference (same rules, every value at hand) agrees with the engine on a net whose
    weights are computed in the forward pass, for the input and for parameters on plain data."""
    from dynamiclrp.reference import ActivationRecorder, reference_propagate

    model = lora_mlp()
    model[2] = nn.utils.parametrizations.spectral_norm(ScaledLinear(8, 8, 0.5)).eval()
    x = torch.randn(3, 6, dtype=DT, requires_grad=True)
    with ActivationRecorder() as rec:
        out = model(x)
    r = torch.randn_like(out)
    params = [model[0].lora_b, model[4].weight]
    torch.testing.assert_close(reference_propagate(out, [x], rec.values(), relevance=r, config=CFG)[0],
                               propagate(out, [x], relevance=r, config=CFG)[0])
    with ActivationRecorder() as rec:
        out = model(x.detach())
    ref = reference_propagate(out, params, rec.values(), relevance=r, config=CFG, want_params=True)
    got = propagate(out, params, relevance=r, config=CFG)
    assert all(t.abs().sum() > 0 for t in got)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------ dot / vdot


@pytest.mark.parametrize("dot", [torch.dot, torch.vdot])
def test_dot_with_a_parameter_is_the_epsilon_rule(dot):
    w = nn.Parameter(torch.randn(6, dtype=DT))
    x = torch.randn(6, dtype=DT, requires_grad=True)
    z = dot(x, w)
    rel, = propagate(z, [x], relevance=torch.tensor(2.5, dtype=DT), config=CFG)
    torch.testing.assert_close(rel, (x * w * 2.5 / z).detach())


@pytest.mark.parametrize("dot", [torch.dot, torch.vdot])
def test_dot_of_two_activations_is_the_uniform_rule(dot):
    a = torch.randn(6, dtype=DT, requires_grad=True)
    b = torch.randn(6, dtype=DT, requires_grad=True)
    z = dot(a, b)
    ra, rb = propagate(z, [a, b], config=CFG)
    torch.testing.assert_close(ra, (a * b / 2).detach())
    torch.testing.assert_close(rb, (a * b / 2).detach())


def test_dot_head_on_a_relu_net_is_gradient_x_input():
    lin = nn.Linear(6, 8, bias=False).to(DT)
    v = nn.Parameter(torch.randn(8, dtype=DT))

    def model(x):
        return torch.stack([torch.vdot(torch.relu(lin(row)), v) for row in x]).unsqueeze(1)

    assert_gradient_x_input(model, torch.randn(2, 6, dtype=DT), target=0)
