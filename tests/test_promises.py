"""The Promise System on small graphs with known answers (paper App. C.1, C.2, C.3, E) and residual networks.

Every test checks (inside ``helpers.run``) that each node propagated exactly once, and checks conservation where
the rules are conservative (proportional add, identity, routing, bias-free epsilon with a tiny epsilon).
"""
import torch
import torch.nn as nn
from helpers import leaf, param, run

from dynamiclrp import LRP, LRPConfig


def share(a, b):
    """The paper's add rule: the share of ``a`` in ``a + b`` (two zeros split evenly)."""
    tiny = torch.finfo(a.dtype).tiny
    return (a.abs() + tiny) / (a.abs() + b.abs() + 2 * tiny)


def stab(z, eps=1e-12):
    """Zennit's stabiliser, as the engine uses it with ``epsilon=1e-12``."""
    return z + eps * ((z >= 0).to(z.dtype) * 2 - 1)


def test_single_promise_chain_appendix_c1():
    # A = add(B, c) where B = neg(transpose(view(E))) and E = relu(x @ W) is an Arg Node (saves its result).
    x, w1, w2 = leaf(3, 4), param(4, 6), param(4, 6)
    e = torch.relu(x @ w1)
    b = -(e.view(6, 3).transpose(0, 1))  # three non-arg single-input nodes: View, Transpose, Neg
    c = (x @ w2).view(6, 3).transpose(0, 1)
    out = b + c
    (r_e, r_c), stats, _ = run(out, [e, c])
    expected_b = share(b, c) * out  # identity through Neg, exact routing back through Transpose and View
    assert torch.allclose(r_e, expected_b.transpose(0, 1).reshape(3, 6), atol=1e-12)
    assert torch.allclose(r_c, share(c, b) * out, atol=1e-12)
    assert stats["promises_by_kind"] == {"strict": 1}
    assert stats["chain_nodes"] >= 3  # View, Transpose, Neg recorded on the branch (plus c's View/Transpose)
    assert stats["max_promise_depth"] == 3


def test_promise_tree_appendix_c2():
    # A = add(view(B), c) with B = add(d, e): B receives A's branch and creates a nested (dependent) promise.
    x, wd, we, wc = leaf(2, 5), param(5, 4), param(5, 4), param(5, 4)
    d, e, c = torch.relu(x @ wd), torch.relu(x @ we), torch.relu(x @ wc)
    bsum = d + e
    out = bsum.view(2, 2, 2).flatten(1) + c
    (r_d, r_e, r_c), stats, result = run(out, [d, e, c])
    b_flat = bsum.detach()
    r_b = share(b_flat, c) * out
    assert torch.allclose(r_c, share(c, b_flat) * out, atol=1e-12)
    assert torch.allclose(r_d, share(d, e) * r_b, atol=1e-12)
    assert torch.allclose(r_e, share(e, d) * r_b, atol=1e-12)
    kinds = stats["promises_by_kind"]
    assert kinds.get("strict") == 1 and kinds.get("dependent") == 1
    # the tree: the dependent promise's parent is a branch of the strict one
    dep = next(p for p in result.promises if p.kind == "dependent")
    assert dep.parents and dep.parents[0].promise.kind == "strict"
    assert torch.allclose(sum(r.sum() for r in (r_d, r_e, r_c)), out.sum())


def test_deadlock_figure2_uses_pre_promise():
    # h2 = h + b(h) with h = x + relu(a(x)): A = the outer add sends branches to h (still waiting for b's
    # relevance) and to b(h); without a Pre-Promise at h the traversal dead-locks (paper Fig. 2 / App. C.3).
    x, wa, wb = leaf(3, 6), param(6, 6), param(6, 6)
    r = torch.relu(x @ wa)
    h = x + r
    z = h @ wb
    out = h + z
    (r_x,), stats, _ = run(out, [x])
    assert stats["promises_by_kind"].get("pre", 0) >= 1

    # slow obvious reference with every activation at hand
    hd, zd, rd = h.detach(), z.detach(), r.detach()
    R = out.detach()
    r_h = share(hd, zd) * R
    r_z = share(zd, hd) * R
    r_h = r_h + hd * ((r_z / stab(zd)) @ wb.detach().T)
    r_x_direct = share(x.detach(), rd) * r_h
    r_r = share(rd, x.detach()) * r_h
    a = x.detach() @ wa.detach()
    expected = r_x_direct + x.detach() * ((r_r / stab(a)) @ wa.detach().T)
    assert torch.allclose(r_x, expected, atol=1e-9)
    assert torch.allclose(r_x.sum(), R.sum(), rtol=1e-9)


def test_aggregation_of_branches_and_tensor_relevance_appendix_e():
    # v (a TBackward node, not an Arg Node) feeds two adds (two promise branches) and a matmul (tensor relevance).
    x, w, k1, k2, w3 = leaf(4, 3), param(3, 5), param(5, 4), param(5, 4), param(4, 5)
    e = torch.relu(x @ w)
    v = e.t()
    s1, s2, s3 = v + k1, v + k2, v @ w3
    out = torch.cat([s1.flatten(), s2.flatten(), s3.flatten()])
    (r_e,), stats, result = run(out, [e])
    vd, R = v.detach(), out.detach()
    R1, R2, R3 = R[:20].view(5, 4), R[20:40].view(5, 4), R[40:].view(5, 5)
    expected_v = share(vd, k1.detach()) * R1 + share(vd, k2.detach()) * R2
    expected_v = expected_v + vd * ((R3 / stab(s3.detach())) @ w3.detach().T)
    assert torch.allclose(r_e, expected_v.t(), atol=1e-9)
    agg = [p for p in result.promises if p.kind in ("pre", "dependent")]
    assert any(len(p.parents) == 2 for p in agg), "both branches should aggregate at one promise"


def test_residual_mlp_conserves():
    class ResMLP(nn.Module):
        def __init__(self, width=16, depth=4):
            super().__init__()
            self.inp = nn.Linear(8, width, bias=False)
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width, bias=False), nn.ReLU(),
                                                      nn.Linear(width, width, bias=False)) for _ in range(depth))
            self.out = nn.Linear(width, 3, bias=False)

        def forward(self, x):
            h = self.inp(x)
            for blk in self.blocks:
                h = h + blk(h)
            return self.out(torch.relu(h))

    model = ResMLP().double().eval()
    x = torch.randn(4, 8, dtype=torch.float64)
    expl = LRP(model, LRPConfig(epsilon=1e-12)).explain(x, target=[0, 1, 2, 0])
    assert torch.allclose(expl.relevance[0].sum(1), expl.seed.sum(1), rtol=1e-8)
    assert expl.stats["promises"] >= 4


def test_resnet_block_conserves():
    class Block(nn.Module):
        def __init__(self, c=4):
            super().__init__()
            self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.down = nn.Conv2d(c, 2 * c, 1, stride=2, bias=False)
            self.c3 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False)

        def forward(self, x):
            h = torch.relu(x + self.c2(torch.relu(self.c1(x))))  # identity shortcut
            h = torch.relu(self.down(h) + self.c3(h))  # projection shortcut
            return h.mean((2, 3))

    model = Block().double().eval()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    expl = LRP(model, LRPConfig(epsilon=1e-12)).explain(x, target=3)
    assert torch.allclose(expl.relevance[0].sum((1, 2, 3)), expl.seed.sum(1), rtol=1e-8)


def test_biased_linear_and_conv_need_no_promise():
    # The paper's code splits a biased Linear/Conv into extra promises; the bias is read from its leaf instead.
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    expl = LRP(model).explain(torch.randn(2, 1, 8, 8))
    assert expl.stats["promises"] == 0
