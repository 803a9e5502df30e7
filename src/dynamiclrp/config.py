"""The configuration object of an explanation: rules and their hyper-parameters."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

_ADD_RULES = ("abs", "z")
_BILINEAR_RULES = ("uniform", "cp")


@dataclass(frozen=True)
class LRPConfig:
    """Rules and hyper-parameters of one explanation. Frozen, validated when built, safe to share.

    Parameters
    ----------
    epsilon:
        Stabiliser of every division ``z + epsilon * sign(z)`` (sign(0) = +1), as in Zennit.
    gamma_linear, gamma_conv:
        Gamma of the (generalised, Zennit-compatible) gamma rule for matrix products with a parameter and for
        convolutions. ``0.0`` gives the plain epsilon rule.
    zplus:
        Use the z+ rule (alpha=1, beta=0) for linear layers and convolutions instead of epsilon/gamma.
    add_rule:
        ``"abs"`` (default) splits sums in proportion to ``|a| / (|a| + |b|)`` (the paper's rule, always
        conservative); ``"z"`` splits in proportion to the signed contributions ``a / (a + b)``, stabilised.
    rule_overrides:
        Map from autograd node name (with or without the overload digit: ``"MulBackward"`` or
        ``"MulBackward0"``) to an :class:`dynamiclrp.rules.OpRule` instance used instead of the built-in rule.
    bilinear:
        How a product of two activations (attention's ``q k^T`` and ``A v``, a gate times a value) is split:
        ``"uniform"`` (AttnLRP's uniform rule, half to each factor) or ``"cp"`` (CP-LRP, Ali et al. 2022: the
        attention weights and the gate are held constant, all relevance goes to the value path).
    canonize:
        Merge eval-mode batch normalisation into the convolution or linear product before it for the purposes of
        the rules, as Zennit's canonizers do: the rule sees ``W' = a*W``, ``b' = a*(b - mu) + beta`` and the batch
        norm passes relevance through (the model is not modified; see :mod:`dynamiclrp.layer_map`).
    layer_map:
        Per-position product rules, validated here: ``{"first": ZBox(low, high), "conv": Gamma(0.25),
        "linear": Epsilon(1e-6), "module:features.0": Flat()}`` with specs from :mod:`dynamiclrp.rules.specs`.
        Specificity: ``module:<glob>`` > ``first`` > ``conv``/``linear`` > the global fields. Empty:
        ``epsilon``/``gamma_*``/``zplus`` above decide everywhere. See :mod:`dynamiclrp.layer_map`.
    check_finite:
        Raise :class:`~dynamiclrp.errors.NonFiniteRelevanceError` at the first node whose relevance holds NaN/Inf.
    unsupported:
        ``"raise"`` (default): an op without a rule raises :class:`~dynamiclrp.errors.UnsupportedOperationError`
        before anything runs. ``"warn"``: warn once, naming the ops, and explain them with the generic rule of
        :class:`~dynamiclrp.rules.base.FallbackRule` (the epsilon rule of the op's linearisation, built from its
        own backward: exact for routing and linear ops) -- a documented approximation, never silent.
    """

    epsilon: float = 1e-6
    gamma_linear: float = 0.0
    gamma_conv: float = 0.0
    zplus: bool = False
    add_rule: str = "abs"
    rule_overrides: Mapping[str, Any] = field(default_factory=dict)
    check_finite: bool = True
    unsupported: str = "raise"
    bilinear: str = "uniform"
    canonize: bool = False
    layer_map: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon!r}")
        for name in ("gamma_linear", "gamma_conv"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.unsupported not in ("raise", "warn"):
            raise ValueError(f"unsupported must be 'raise' or 'warn', got {self.unsupported!r}")
        if self.bilinear not in _BILINEAR_RULES:
            raise ValueError(f"bilinear must be one of {_BILINEAR_RULES}, got {self.bilinear!r}")
        if self.add_rule not in _ADD_RULES:
            raise ValueError(f"add_rule must be one of {_ADD_RULES}, got {self.add_rule!r}")
        from .rules import OpRule  # local import: rules import nothing from here at import time

        for key, rule in dict(self.rule_overrides).items():
            if not isinstance(key, str) or not key.endswith(tuple(f"Backward{d}" for d in ("", *"0123456789"))):
                raise ValueError(f"rule_overrides key {key!r} is not an autograd node name like 'MulBackward0'")
            if not isinstance(rule, OpRule):
                raise TypeError(f"rule_overrides[{key!r}] must be an OpRule instance, got {type(rule).__name__}")
        object.__setattr__(self, "rule_overrides", MappingProxyType(dict(self.rule_overrides)))
        if not isinstance(self.canonize, bool):
            raise TypeError(f"canonize must be True or False, got {self.canonize!r}")
        from .layer_map import validate

        object.__setattr__(self, "layer_map", MappingProxyType(validate(self.layer_map)))

    @classmethod
    def epsilon_rule(cls, epsilon: float = 1e-6) -> "LRPConfig":
        """Plain epsilon-LRP everywhere (Bach et al. 2015)."""
        return cls(epsilon=epsilon)

    @classmethod
    def gamma(cls, gamma: float = 0.25, epsilon: float = 1e-6) -> "LRPConfig":
        """Gamma rule on linear layers and convolutions (Montavon et al. 2019)."""
        return cls(epsilon=epsilon, gamma_linear=gamma, gamma_conv=gamma)

    @classmethod
    def attnlrp(cls, epsilon: float = 1e-12) -> "LRPConfig":
        """AttnLRP (Achtibat et al. 2024); see :func:`dynamiclrp.presets.attnlrp`."""
        from .presets import attnlrp

        return attnlrp(epsilon=epsilon)

    @classmethod
    def cp_lrp(cls, epsilon: float = 1e-12) -> "LRPConfig":
        """CP-LRP (Ali et al. 2022); see :func:`dynamiclrp.presets.cp_lrp`."""
        from .presets import cp_lrp

        return cp_lrp(epsilon=epsilon)

    @classmethod
    def epsilon_plus(cls, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> "LRPConfig":
        """Zennit's ``EpsilonPlus`` composite (Montavon et al. 2019); see :func:`dynamiclrp.presets.epsilon_plus`."""
        from .presets import epsilon_plus

        return epsilon_plus(epsilon=epsilon, stabilizer=stabilizer)

    @classmethod
    def epsilon_gamma_box(cls, low, high, epsilon: float = 1e-6, gamma: float = 0.25,
                          stabilizer: float = 1e-6) -> "LRPConfig":
        """Zennit's ``EpsilonGammaBox`` composite (Montavon et al. 2019; Kohlbrenner et al. 2020); see
        :func:`dynamiclrp.presets.epsilon_gamma_box`."""
        from .presets import epsilon_gamma_box

        return epsilon_gamma_box(low=low, high=high, epsilon=epsilon, gamma=gamma, stabilizer=stabilizer)

    @classmethod
    def epsilon_plus_flat(cls, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> "LRPConfig":
        """Zennit's ``EpsilonPlusFlat`` composite (Kohlbrenner et al. 2020); see
        :func:`dynamiclrp.presets.epsilon_plus_flat`."""
        from .presets import epsilon_plus_flat

        return epsilon_plus_flat(epsilon=epsilon, stabilizer=stabilizer)

    @classmethod
    def epsilon_alpha2_beta1(cls, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> "LRPConfig":
        """Zennit's ``EpsilonAlpha2Beta1`` composite (Bach et al. 2015; Montavon et al. 2019); see
        :func:`dynamiclrp.presets.epsilon_alpha2_beta1`."""
        from .presets import epsilon_alpha2_beta1

        return epsilon_alpha2_beta1(epsilon=epsilon, stabilizer=stabilizer)

    def __hash__(self):  # MappingProxyType is unhashable; configs key plan caches
        return hash((self.epsilon, self.gamma_linear, self.gamma_conv, self.zplus, self.add_rule,
                     tuple(sorted((k, id(v)) for k, v in self.rule_overrides.items())), self.check_finite,
                     self.unsupported, self.bilinear, self.canonize,
                     tuple(sorted((k, repr(v)) for k, v in self.layer_map.items()))))
