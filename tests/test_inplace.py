"""In-place writes into part of a tensor (``CopySlices``) and ``index_put``: each explained exactly as the
equivalent out-of-place program (``cat``, ``where``, ``x + v``) is, through promises too, and checked against
hand-written oracles where the rule is a formula."""
import pytest
import torch

from dynamiclrp import LRP, ConstantRecorder, LRPConfig, UnrecoverableValueError, propagate
from dynamiclrp.graph import Graph
from dynamiclrp.saved import op_name

CFG = LRPConfig(epsilon=1e-12)


def explain(fn, *tensors):
    """Relevance of ``tensors`` for ``fn(*tensors)`` (relevance = the output), constants recorded."""
    with ConstantRecorder() as rec:
        y = fn(*tensors)
    return propagate(y, list(tensors), relevance=y.detach(), config=CFG, constants=rec.calls), y


def assert_same(a, b):
    for ra, rb in zip(a, b):
        torch.testing.assert_close(ra, rb, rtol=1e-10, atol=1e-12)


def leaves(*shapes):
    torch.manual_seed(0)
    return [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]


def test_slice_assignment_is_explained_as_cat():
    """``t = empty; t[:, :4] = h; t[:, 4:] = h[:, :1]`` is ``cat([h, h[:, :1], h[:, :1]])``, and the sum
    ``t + h.sum()`` needs ``t``'s value: the writes are recomputed by a promise from the recorded calls."""
    x, w = leaves((3, 4), (4, 4))

    def written(x, w):
        h = x @ w
        t = torch.empty(3, 6, dtype=torch.float64)
        t[:, :4] = h
        t[:, 4:] = h[:, :1]
        return t + h.sum(1, keepdim=True)

    def concatenated(x, w):
        h = x @ w
        return torch.cat([h, h[:, :1].expand(3, 2)], 1) + h.sum(1, keepdim=True)

    a, y = explain(written, x, w)
    assert "CopySlices" in {op_name(n) for n in Graph.capture(y).order}
    b, _ = explain(concatenated, x, w)
    assert_same(a, b)
    assert torch.isfinite(a[0]).all() and a[0].abs().sum() > 0


def test_update_through_a_view_is_explained_as_the_out_of_place_op():
    """``h[:, :2] += v``, ``h[:, 2:].mul_(s)`` (a Parameter) and an accumulating ``index_put_`` on a view: the
    out-of-place op's rule inside the region, identity outside -- the same numbers as the functional program."""
    x, v = leaves((3, 5), (3, 2))
    s = torch.nn.Parameter(torch.rand(2, dtype=torch.float64) + 0.5)
    idx = torch.tensor([0, 2, 2])

    def in_place(x, v, s):
        h = x * 1.0
        h[:, :2] += v
        h[:, 2:4].mul_(s)
        h[:, 4:].index_put_((idx,), v[:, :1] * 3, accumulate=True)
        return h * h.sum()

    def functional(x, v, s):
        h = x * 1.0
        last = h[:, 4:].index_put((idx,), v[:, :1] * 3, accumulate=True)
        h = torch.cat([h[:, :2] + v, h[:, 2:4] * s, last], 1)
        return h * h.sum()

    a, y = explain(in_place, x, v, s)
    torch.testing.assert_close(y, functional(x, v, s))
    b, _ = explain(functional, x, v, s)
    assert_same(a, b)
    assert a[1].abs().sum() > 0
    assert (a[2] == 0).all()  # a product with a parameter is a linear layer: the activation takes it all


def test_graph_operand_passed_by_keyword():
    """``h[:, :2].add_(other=v, alpha=2)``: the graph operand given by keyword is found too."""
    x, v = leaves((3, 4), (3, 2))

    def in_place(x, v):
        h = x * 1.0
        h[:, :2].add_(other=v, alpha=2)
        return h * h.sum()

    def functional(x, v):
        h = x * 1.0
        h = torch.cat([h[:, :2] + 2 * v, h[:, 2:]], 1)
        return h * h.sum()

    a, _ = explain(in_place, x, v)
    b, _ = explain(functional, x, v)
    assert_same(a, b)


def test_write_into_a_view_of_a_view_and_masked_fill_on_a_view():
    """``t[1][:, 1:3] = v`` (a view of a view: the base is found through ``_base``) and ``masked_fill_`` on a
    slice, against the same written out with ``cat`` and a product with the 0/1 mask."""
    x, v = leaves((2, 3, 4), (3, 2))

    def in_place(x, v):
        t = x * 2.0
        t[1][:, 1:3] = v
        t[0, :, :2].masked_fill_(x[0, :, :2] > 0, 0.0)
        return t * t.sum()

    def functional(x, v):
        t = x * 2.0
        row = torch.cat([t[1][:, :1], v, t[1][:, 3:]], 1)
        first = torch.cat([t[0, :, :2] * (x[0, :, :2] <= 0), t[0, :, 2:]], 1)
        t = torch.stack([first, row])
        return t * t.sum()

    a, y = explain(in_place, x, v)
    torch.testing.assert_close(y, functional(x, v))
    b, _ = explain(functional, x, v)
    assert_same(a, b)


def test_constant_written_into_a_slice_absorbs_its_relevance():
    """``h[:, 0] = 0``: the overwritten column's relevance stays with the constant (like a bias); every other
    entry passes unchanged."""
    (x,) = leaves((3, 4))

    def fn(x):
        h = x * 1.0
        h[:, 0] = 0.0
        return h

    (r,), y = explain(fn, x)
    expected = y.detach().clone()
    torch.testing.assert_close(r, expected)
    assert (r[:, 0] == 0).all()


def test_index_put_accumulate_matches_a_loop_oracle():
    """``y = x.index_put((idx,), v, accumulate=True)``: each output row is ``x[i] + sum of v[k] with
    idx[k] == i``; the abs rule gives every addend ``|c| / sum |c|`` of the row's relevance."""
    x, v = leaves((5, 3), (4, 3))
    idx = torch.tensor([0, 2, 2, 4])
    (rx, rv), y = explain(lambda x, v: x.index_put((idx,), v, accumulate=True), x, v)
    ex, ev = torch.zeros_like(x), torch.zeros_like(v)
    for i in range(5):
        for j in range(3):
            terms = [(None, x[i, j].item())] + [(k, v[k, j].item()) for k in range(4) if idx[k] == i]
            total = sum(abs(c) for _, c in terms)
            for k, c in terms:
                share = abs(c) / total * y[i, j].item()
                if k is None:
                    ex[i, j] += share
                else:
                    ev[k, j] += share
    torch.testing.assert_close(rx, ex)
    torch.testing.assert_close(rv, ev)


def test_index_put_with_a_mask_and_a_constant_through_a_promise():
    """``y[mask] = 0.5`` (``index_put`` with a boolean mask and a constant autograd does not keep): routing,
    and a promise rebuilds ``y`` with the recorded constant."""
    x, c = leaves((3, 4), (3, 4))
    mask = torch.rand(3, 4, generator=torch.Generator().manual_seed(1)) > 0.5

    def fn(x, c):
        y = x * 1.0
        y[mask] = 0.5
        return y + c

    (rx, rc), out = explain(fn, x, c)
    y = torch.where(mask, 0.5, x.detach())
    share_y = y.abs() / (y.abs() + c.detach().abs()) * out.detach()
    torch.testing.assert_close(rx, torch.where(mask, 0.0, share_y))
    torch.testing.assert_close(rx.sum() + rc.sum() + share_y[mask].sum(), out.detach().sum())


def test_without_the_recorder_the_error_names_the_fix():
    (x,) = leaves((3, 4))
    h = x * 1.0
    h[:, :2] = h[:, 2:]
    with pytest.raises(UnrecoverableValueError, match="ConstantRecorder"):
        propagate(h, [x])


def test_graph_stays_usable_after_explaining_in_place_writes():
    """Rules call the nodes' own backward (a vector-Jacobian product); that must not free anything."""

    class Writer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 6).double()

        def forward(self, x):
            h = self.lin(x)
            h[:, :2] = h[:, 2:4] * 2
            h[:, 4:] += x[:, :2]
            return h

    torch.manual_seed(0)
    model, x = Writer(), torch.randn(3, 4, dtype=torch.float64)
    expl = LRP(model, CFG).explain(x, target=1)
    assert torch.isfinite(expl.relevance[0]).all() and expl.relevance[0].abs().sum() > 0
    xg = x.clone().requires_grad_(True)
    with ConstantRecorder() as rec:
        out = model(xg)
    propagate(out, [xg], config=CFG, constants=rec.calls)
    out[:, 1].sum().backward()
    expected = torch.autograd.grad(model(x.clone().requires_grad_(True))[:, 1].sum(), model.lin.weight)[0]
    torch.testing.assert_close(model.lin.weight.grad, expected)


def test_scatter_add_matches_index_add_and_scatter_reduce_a_loop_oracle():
    """``scatter_add`` along rows is ``index_add``; ``scatter_reduce(..., "sum", include_self=False)`` leaves
    ``x`` out of written rows: each row's relevance is shared ``|c| / sum |c|`` among its addends only."""
    x, v = leaves((5, 3), (4, 3))
    idx = torch.tensor([0, 2, 2, 4])
    rows = idx[:, None].expand(4, 3)
    a, _ = explain(lambda x, v: x.index_add(0, idx, v), x, v)
    b, _ = explain(lambda x, v: x.scatter_add(0, rows, v), x, v)
    assert_same(a, b)

    (rx, rv), y = explain(lambda x, v: x.scatter_reduce(0, rows, v, "sum", include_self=False), x, v)
    ex, ev = torch.zeros_like(x), torch.zeros_like(v)
    for i in range(5):
        for j in range(3):
            terms = [(k, v[k, j].item()) for k in range(4) if idx[k] == i] or [(None, x[i, j].item())]
            total = sum(abs(c) for _, c in terms)
            for k, c in terms:
                if k is None:
                    ex[i, j] += abs(c) / total * y[i, j].item()
                else:
                    ev[k, j] += abs(c) / total * y[i, j].item()
    torch.testing.assert_close(rx, ex)
    torch.testing.assert_close(rv, ev)


def test_constant_sources_of_scatter_writes_are_read_from_the_forward_pass():
    """A frozen tensor scattered into an activation (a buffer of image features, say) is a constant edge: the
    promise that rebuilds the result reads it from the recorded call; its positions keep their relevance."""
    x, c = leaves((2, 6), (2, 6))
    feats = torch.randn(2, 2, dtype=torch.float64)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 1:3] = True
    idx = torch.tensor([[0, 4], [5, 1]])
    for write in (lambda h: h.masked_scatter(mask, feats), lambda h: h.scatter(1, idx, feats)):
        (rx, _rc), out = explain(lambda x, c, write=write: write(x * 1.0) + c, x, c)
        y = write(x.detach())
        share = y.abs() / (y.abs() + c.detach().abs()) * out.detach()
        written = write(torch.zeros_like(y)) != 0
        torch.testing.assert_close(rx, torch.where(written, 0.0, share))
