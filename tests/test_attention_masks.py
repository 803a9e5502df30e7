"""Constant additive masks before a softmax (eager attention masks, Swin's shifted-window mask, ALiBi biases):
autograd keeps neither the mask nor the masked scores, so the engine treats the constant as a bias of the softmax
(``R_a = a * (R_s - s * sum R_s)``). Checked against a hand-written oracle, against the fused SDPA rule on the same
model (two different graphs, one answer), and refused where the sum also feeds something else."""
import pytest
import torch
import transformers
from helpers import leaf, param, run

from dynamiclrp import LRP, ConstantRecorder, LRPConfig, propagate
from dynamiclrp.errors import UnrecoverableValueError
from dynamiclrp.rules.linear import Matmul, product_relevance


def _oracle(x, wq, wk, wv, mask, r_out, cfg):
    """Relevance of ``x`` for ``softmax(xWq (xWk)^T + mask) xWv`` with every intermediate value at hand."""
    q, k, v = x @ wq, x @ wk, x @ wv
    a = q @ k.T
    p = torch.softmax(a + mask, -1)
    r_p, r_v, _ = product_relevance(Matmul(), p, v, None, r_out, cfg, 0.0, True, True, False)
    r_a = a * (r_p - p * r_p.sum(-1, keepdim=True))  # the mask absorbs mask * g
    r_q, r_kt, _ = product_relevance(Matmul(), q, k.T, None, r_a, cfg, 0.0, True, True, False)
    rel = torch.zeros_like(x)
    for w, r in ((wq, r_q), (wk, r_kt.T), (wv, r_v)):  # epsilon rule of the three bias-free projections
        z = x @ w
        rel = rel + x * ((r / (z + cfg.epsilon * (2 * (z >= 0) - 1))) @ w.T)
    return rel


def test_constant_mask_before_softmax_matches_oracle():
    torch.manual_seed(0)
    x = leaf(5, 4)
    wq, wk, wv = param(4, 3), param(4, 3), param(4, 3)
    mask = torch.tensor([0.0, -2.0, 0.5, -1e9, 1.0], dtype=torch.float64)  # a buffer: no grad, not saved
    out = torch.softmax((x @ wq) @ (x @ wk).T + mask, -1) @ (x @ wv)
    cfg = LRPConfig(epsilon=1e-9)
    (rel,), stats, _ = run(out, [x], config=cfg)
    expected = _oracle(x.detach(), wq.detach(), wk.detach(), wv.detach(), mask, out.detach(), cfg)
    torch.testing.assert_close(rel, expected, rtol=1e-8, atol=1e-10)
    # the masked key column (-1e9) gets no relevance through the scores
    assert stats["promises"] >= 1


def test_constant_mask_with_another_consumer_is_solved_or_refused():
    x = leaf(3, 4)
    w = param(4, 4)
    mask = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    scores = x @ w + mask
    # the masked sum also feeds a product: no bias reading possible, but the product saved the sum, so the
    # engine solves mask = sum - x @ w (tests/test_recovery.py) and the add splits relevance with the true mask
    out = (torch.softmax(scores, -1) * scores).sum(-1)
    with ConstantRecorder() as rec:
        recorded_scores = x @ w + mask
        recorded = (torch.softmax(recorded_scores, -1) * recorded_scores).sum(-1)
    cfg = LRPConfig(epsilon=1e-12)
    (solved,) = propagate(out, [x], relevance=out.detach(), config=cfg)
    (expected,) = propagate(recorded, [x], relevance=recorded.detach(), config=cfg, constants=rec.calls)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(solved, expected)
    # where nothing saved the sum (a ReLU keeps only its result), the engine refuses, naming the op
    out = torch.softmax(scores, -1) * torch.relu(scores)
    with pytest.raises(UnrecoverableValueError, match="AddBackward0"):
        run(out.sum(-1), [x])


def _gpt2(impl):
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16, bos_token_id=0,
                                  eos_token_id=0)
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def test_eager_mask_agrees_with_fused_attention():
    """GPT-2 with a padded batch: eager attention adds a float mask (finfo.min) to the scores, SDPA takes it as
    ``attn_mask``. Same weights, two graphs, the same relevance."""
    ids = torch.tensor([[5, 7, 9, 11, 13, 2], [3, 4, 6, 8, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    cfg = LRPConfig(epsilon=1e-9)
    target = (3, 17)
    eager = LRP(_gpt2("eager"), cfg).explain(ids, target=target, attention_mask=mask, use_cache=False)
    sdpa = LRP(_gpt2("sdpa"), cfg).explain(ids, target=target, attention_mask=mask, use_cache=False)
    torch.testing.assert_close(eager.embedding_relevance[0], sdpa.embedding_relevance[0], rtol=1e-6, atol=1e-9)
    assert eager.embedding_relevance[0].abs().sum() > 0
    # padded positions (after the target in the second sample) get nothing
    assert eager.relevance[0][1, 4:].abs().max() == 0


def test_alibi_bias_is_absorbed():
    """BLOOM's ALiBi bias enters ``baddbmm`` as a constant; the explanation runs and stays finite."""
    cfg = transformers.BloomConfig(hidden_size=16, n_layer=2, n_head=2, vocab_size=50)
    torch.manual_seed(0)
    model = transformers.BloomForCausalLM(cfg).double().eval()
    ids = torch.randint(1, 50, (1, 6))
    expl = LRP(model, LRPConfig(epsilon=1e-9)).explain(ids, target=(5, 3), use_cache=False)
    assert torch.isfinite(expl.embedding_relevance[0]).all()
    assert expl.embedding_relevance[0].abs().sum() > 0
