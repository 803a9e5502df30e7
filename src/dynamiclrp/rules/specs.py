"""Product rules as small frozen specs, one per LRP rule, in the spirit of Zennit's rule classes.

A spec says how the relevance ``R`` of ``z = f(x, W) + b`` is distributed to the activation ``x`` when ``W`` (and
``b``) are parameters; ``f`` is bilinear (a matrix product or a convolution). Every spec is called as
``spec(op, x, w, bias, r, want_params) -> (R_x, R_W, R_b)`` where ``op(x, w)`` evaluates ``f`` and
``op.vjp(x, w, s, wrt)`` applies its transpose in operand ``wrt``. ``bias`` already broadcasts against ``z`` (or is
``None``). ``R_W`` is computed only when ``want_params`` (and only by the rules where it is defined: Epsilon,
Gamma, ZPlus); ``R_b`` is the bias's absorbed share where the rule defines one.

Notation: ``x+ = max(x, 0)``, ``x- = min(x, 0)``, likewise ``W+``/``W-``, ``b+``/``b-``; ``stab(z) = z + e*sign(z)``
(``sign(0) = +1``); ``f^T_W(s)`` is the transpose of ``f(., W)`` applied to ``s``.

Used through :class:`~dynamiclrp.LRPConfig`'s ``layer_map`` (per position) or implied by its global fields
(``epsilon``, ``gamma_linear``/``gamma_conv``, ``zplus``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import stabilize


class ProductSpec:
    """Base of the product rule specs (frozen dataclasses): validated when built, hashable by ``repr``."""

    def __call__(self, op, x, w, bias, r, want_params):
        raise NotImplementedError

    def _check(self, **nonnegative):
        for name, value in nonnegative.items():
            if not value >= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 0, got {value!r}")


def _zero(x):
    return torch.zeros((), dtype=x.dtype)


def _nonnegative(x) -> bool:
    """Whether ``x >= 0`` everywhere (a ReLU's output): then ``x- = 0`` and every term with ``x-`` of the
    sign-aware rules is exactly zero, so they are skipped (one reduction instead of products and transposes)."""
    return x.numel() > 0 and not x.is_complex() and bool(x.min() >= 0)


def ratio(r, z, epsilon):
    """``s = r / stab(z)``, written into the stabiliser's temporary (one allocation of ``z``'s size instead of
    two; the same floats as ``r / stabilize(z, epsilon)``)."""
    den = stabilize(z, epsilon)
    if den.shape == r.shape and den.dtype == r.dtype and den.device == r.device:
        return torch.div(r, den, out=den)
    return r / den


def _signs(x) -> tuple:
    """``(x+, x-)``; ``x-`` is ``None`` when ``x >= 0`` (:func:`_nonnegative`): its terms are exactly zero."""
    return x.clamp(min=0), (None if _nonnegative(x) else x.clamp(max=0))


def _sign_split(op, xp, xn, wa, wb, bias_terms, r, stabilizer, want_params) -> tuple:
    """One sign-aware part of the z+, alpha-beta and gamma rules: ``s = r / stab(f(x+, wa) + f(x-, wb) + sum of
    bias_terms)``, ``R_x = x+ * f^T_{wa}(s) + x- * f^T_{wb}(s)`` and, if ``want_params``,
    ``R_W = wa * f^T_{x+}(s) + wb * f^T_{x-}(s)`` (else ``None``). ``xn`` is ``None`` after a ReLU: its
    products and transposes vanish and are skipped (same floats, half the work)."""
    z = op(xp, wa) if xn is None else op(xp, wa) + op(xn, wb)
    for term in bias_terms:
        z = z + term
    s = ratio(r, z, stabilizer)
    rx = xp * op.vjp(xp, wa, s, 0)
    rw = wa * op.vjp(xp, wa, s, 1) if want_params else None
    if xn is not None:
        rx = rx + xn * op.vjp(xn, wb, s, 0)
        if want_params:
            rw = rw + wb * op.vjp(xn, wb, s, 1)
    return rx, rw


def output_of(op, x, w, b0):
    """``z = f(x, W) + b`` for the operands the spec was called with: the value the forward pass or a promise
    already produced (``op.z``, see :func:`~dynamiclrp.rules.linear.known_output`) when known, else computed
    (``b0``: the bias, or a zero scalar)."""
    z = getattr(op, "z", None)
    return op(x, w) + b0 if z is None else z


def like_input(op, value, x):
    """``value`` (a scalar or a tensor broadcasting to the layer's input) shaped like the operand ``x``. For a
    layer that consumes the explained input through pads or reshapes (``op.embed``), ``value`` is shaped like the
    input and sent through them: a padded border holds the pad value, as in Zennit, where the rule sees the module
    input (a ``Conv2dSame`` pads inside its forward)."""
    value = torch.as_tensor(value, dtype=x.dtype)
    embed = getattr(op, "embed", None)
    shape = x.shape if embed is None else embed[0]
    try:
        value = value.expand(shape)
    except RuntimeError as err:
        raise ValueError(f"a bound of shape {tuple(value.shape)} does not broadcast to the layer input of shape "
                         f"{tuple(shape)}; pass scalars or tensors like (1, C, 1, 1)") from err
    return value if embed is None else embed[1](value)


@dataclass(frozen=True)
class Epsilon(ProductSpec):
    """Epsilon rule (Bach et al. 2015, "On pixel-wise explanations ... by layer-wise relevance propagation").

    ``s = R / stab(z)`` with ``z = f(x, W) + b``; ``R_x = x * f^T_W(s)``, the bias keeps ``b * s``.
    ``epsilon = 0`` is LRP-0 (the sign-kept stabiliser still avoids division by zero). Zennit: ``Epsilon``.
    """

    epsilon: float = 1e-6

    def __post_init__(self):
        self._check(epsilon=self.epsilon)

    def __call__(self, op, x, w, bias, r, want_params):
        z = output_of(op, x, w, _zero(x) if bias is None else bias)
        s = ratio(r, z, self.epsilon)
        rw = w * op.vjp(x, w, s, 1) if want_params else None
        return x * op.vjp(x, w, s, 0), rw, None if bias is None else bias * s


@dataclass(frozen=True)
class Gamma(ProductSpec):
    """Generalised gamma rule (Montavon et al. 2019, "Layer-wise relevance propagation: an overview"; the sign-aware
    form of Andeol et al. 2021, as Zennit's ``Gamma``).

    ``W^+ = W + g*W+``, ``W^- = W + g*W-``. Outputs with ``z > 0``: ``z_p = f(x+, W^+) + f(x-, W^-) + b + g*b+``,
    ``R_x = x+ * f^T_{W^+}(s_p) + x- * f^T_{W^-}(s_p)`` with ``s_p = R / stab(z_p)``; outputs with ``z < 0`` swap
    ``W^+``/``W^-`` and use ``b + g*b-``. ``gamma = 0`` is the epsilon rule with ``stabilizer``.
    """

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def __post_init__(self):
        self._check(gamma=self.gamma, stabilizer=self.stabilizer)

    def __call__(self, op, x, w, bias, r, want_params):
        g, b0 = self.gamma, _zero(x) if bias is None else bias
        wp, wn = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
        xp, xn = _signs(x)
        z = output_of(op, x, w, b0)
        rxp, rwp = _sign_split(op, xp, xn, wp, wn, (b0, g * b0.clamp(min=0)), r * (z > 0), self.stabilizer,
                               want_params)
        rxn, rwn = _sign_split(op, xp, xn, wn, wp, (b0, g * b0.clamp(max=0)), r * (z < 0), self.stabilizer,
                               want_params)
        return rxp + rxn, rwp + rwn if want_params else None, None


@dataclass(frozen=True)
class ZPlus(ProductSpec):
    """z+ rule (Montavon et al. 2017, "Explaining nonlinear classification decisions with deep Taylor
    decomposition"), in Zennit's sign-aware form (alpha=1, beta=0 also for negative inputs).

    ``z = f(x+, W+) + f(x-, W-) + b+``, ``s = R / stab(z)``, ``R_x = x+ * f^T_{W+}(s) + x- * f^T_{W-}(s)``.
    """

    stabilizer: float = 1e-6

    def __post_init__(self):
        self._check(stabilizer=self.stabilizer)

    def __call__(self, op, x, w, bias, r, want_params):
        b0 = _zero(x) if bias is None else bias
        xp, xn = _signs(x)
        rx, rw = _sign_split(op, xp, xn, w.clamp(min=0), w.clamp(max=0), (b0.clamp(min=0),), r, self.stabilizer,
                             want_params)
        return rx, rw, None


@dataclass(frozen=True)
class AlphaBeta(ProductSpec):
    """Alpha-beta rule (Bach et al. 2015; Montavon et al. 2019), ``alpha - beta = 1``, as Zennit's ``AlphaBeta``.

    ``z_+ = f(x+, W+) + f(x-, W-) + b+`` and ``z_- = f(x+, W-) + f(x-, W+) + b-`` (the activating and the
    inhibiting parts); ``R_x = alpha * (x+ * f^T_{W+}(R/stab(z_+)) + x- * f^T_{W-}(R/stab(z_+)))
    - beta * (x+ * f^T_{W-}(R/stab(z_-)) + x- * f^T_{W+}(R/stab(z_-)))``.
    """

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self):
        self._check(alpha=self.alpha, beta=self.beta, stabilizer=self.stabilizer)
        if abs(self.alpha - self.beta - 1) > 1e-12:
            raise ValueError(f"AlphaBeta needs alpha - beta = 1 (conservation), got alpha={self.alpha}, "
                             f"beta={self.beta}")

    def __call__(self, op, x, w, bias, r, want_params):
        b0 = _zero(x) if bias is None else bias
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        xp, xn = _signs(x)
        pos, _ = _sign_split(op, xp, xn, wp, wn, (b0.clamp(min=0),), r, self.stabilizer, False)
        neg, _ = _sign_split(op, xp, xn, wn, wp, (b0.clamp(max=0),), r, self.stabilizer, False)
        return self.alpha * pos - self.beta * neg, None, None


@dataclass(frozen=True, eq=False)
class ZBox(ProductSpec):
    """z^B rule for inputs bounded by ``low <= x <= high`` (Montavon et al. 2017), as Zennit's ``ZBox``; meant for
    the layer that consumes the input (key ``"first"``).

    ``z = f(x, W) - f(l, W+) - f(h, W-)`` (biases cancel), ``s = R / stab(z)``,
    ``R_x = x * f^T_W(s) - l * f^T_{W+}(s) - h * f^T_{W-}(s)``. ``low``/``high``: scalars or tensors that
    broadcast to the product's input (e.g. per-channel bounds of normalised images, shape ``(1, 3, 1, 1)``).
    """

    low: Any = 0.0
    high: Any = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self):
        self._check(stabilizer=self.stabilizer)
        if not bool(torch.all(torch.as_tensor(self.low) <= torch.as_tensor(self.high))):
            raise ValueError("ZBox needs low <= high everywhere")

    def __eq__(self, other):  # bounds may be tensors: equal values, not elementwise ``==``
        def same(a, b):
            a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
            return a.shape == b.shape and torch.equal(a, b)

        return (type(other) is ZBox and self.stabilizer == other.stabilizer and same(self.low, other.low)
                and same(self.high, other.high))

    def __hash__(self):
        return hash(("ZBox", self.stabilizer))

    def __call__(self, op, x, w, bias, r, want_params):
        low, high = like_input(op, self.low, x), like_input(op, self.high, x)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        s = r / stabilize(op(x, w) - op(low, wp) - op(high, wn), self.stabilizer)
        return x * op.vjp(x, w, s, 0) - low * op.vjp(low, wp, s, 0) - high * op.vjp(high, wn, s, 0), None, None


@dataclass(frozen=True)
class Flat(ProductSpec):
    """Flat rule (Lapuschkin et al. 2019, "Unmasking Clever Hans predictors..."), as Zennit's ``Flat``: every
    input of an output's receptive field gets an equal share, whatever its value or weight.

    ``z = f(1, 1)`` (no bias), ``R_x = f^T_1(R / stab(z))``.
    """

    stabilizer: float = 1e-6

    def __post_init__(self):
        self._check(stabilizer=self.stabilizer)

    def __call__(self, op, x, w, bias, r, want_params):
        ones, wones = like_input(op, 1.0, x), torch.ones_like(w)
        return op.vjp(ones, wones, r / stabilize(op(ones, wones), self.stabilizer), 0), None, None


@dataclass(frozen=True)
class WSquare(ProductSpec):
    """w^2 rule (Montavon et al. 2017), as Zennit's ``WSquare`` (which squares the bias too): for unbounded inputs.

    ``z = f(1, W^2) + b^2``, ``R_x = f^T_{W^2}(R / stab(z))``; the bias keeps the rest.
    """

    stabilizer: float = 1e-6

    def __post_init__(self):
        self._check(stabilizer=self.stabilizer)

    def __call__(self, op, x, w, bias, r, want_params):
        ones, w2 = like_input(op, 1.0, x), w * w
        z = op(ones, w2) + (_zero(x) if bias is None else bias * bias)
        return op.vjp(ones, w2, r / stabilize(z, self.stabilizer), 0), None, None


@dataclass(frozen=True)
class Pass(ProductSpec):
    """Pass-through (Zennit's ``Pass``): ``R_x = R_z``, for a product whose output has the input's shape (elsewhere
    it raises). Activations and, under canonization, merged batch norms pass relevance this way anyway."""

    def __call__(self, op, x, w, bias, r, want_params):
        if r.numel() != x.numel():
            raise ValueError(f"Pass() needs a shape-preserving layer, but this product maps {tuple(x.shape)} to "
                             f"{tuple(r.shape)}; use Epsilon(), Gamma(), ZPlus()... here")
        return r.reshape(x.shape), None, None


#: every spec by name (used by error messages and the layer_map validation)
SPECS = {cls.__name__: cls for cls in (Epsilon, Gamma, ZPlus, AlphaBeta, ZBox, Flat, WSquare, Pass)}


def global_spec(config, conv: bool) -> ProductSpec:
    """The spec implied by the global fields of an :class:`~dynamiclrp.LRPConfig` (no ``layer_map`` entry)."""
    if config.zplus:
        return ZPlus(stabilizer=config.epsilon)
    gamma = config.gamma_conv if conv else config.gamma_linear
    if gamma > 0:
        return Gamma(gamma=gamma, stabilizer=config.epsilon)
    return Epsilon(epsilon=config.epsilon)
