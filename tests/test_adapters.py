"""The Captum- and Quantus-shaped entry points, each run through the other library."""
import numpy as np
import pytest
import torch
from torch import nn

from dynamiclrp import LRPConfig
from dynamiclrp.adapters import CaptumLRP, quantus_explain_func


def _relu_cnn():
    """A bias-free ReLU CNN: epsilon-LRP with a tiny epsilon equals gradient x input exactly."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5, bias=False)).double().eval()


def test_captum_lrp_equals_captum_input_x_gradient_on_bias_free_relu_net():
    from captum.attr import InputXGradient

    model = _relu_cnn()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    target = [0, 3, 4]
    ours = CaptumLRP(model, LRPConfig(epsilon=1e-12)).attribute(x, target=target)
    ref = InputXGradient(model).attribute(x, target=target)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9)
    assert not CaptumLRP(model).has_convergence_delta()


def test_captum_lrp_additional_forward_args_and_tuple_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3, bias=False)
            self.b = nn.Linear(4, 3, bias=False)

        def forward(self, x, y, scale):
            return (self.a(x) + self.b(y)) * scale

    model = Two().double()
    x, y = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    scale = torch.tensor(2.0, dtype=torch.float64)
    rx, ry = CaptumLRP(model, LRPConfig(epsilon=1e-12, add_rule="z")).attribute(
        (x, y), target=1, additional_forward_args=(scale,))
    out = model(x, y, scale)[:, 1]
    torch.testing.assert_close((rx + ry).sum(1), out)  # bias-free: relevance conserved, none for `scale`
    torch.testing.assert_close(rx, x * model.a.weight[1] * 2)


def test_captum_visualization_accepts_the_attribution():
    from captum.attr import visualization as viz

    model = _relu_cnn().float()
    x = torch.rand(1, 3, 8, 8)
    attr = CaptumLRP(model).attribute(x, target=2)
    fig, _ax = viz.visualize_image_attr(attr[0].permute(1, 2, 0).detach().numpy(), x[0].permute(1, 2, 0).numpy(),
                                        method="blended_heat_map", sign="all", use_pyplot=False)
    assert fig is not None


def test_quantus_faithfulness_correlation_is_one_for_a_linear_model():
    """For a bias-free linear model, removing a subset of features (baseline 0) lowers the output by exactly the
    relevance LRP gave that subset, so Quantus' faithfulness correlation is 1."""
    quantus = pytest.importorskip("quantus")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3, bias=False)).eval()
    x = np.random.default_rng(0).normal(size=(4, 2, 4, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    a = quantus_explain_func(model, x, y, config=LRPConfig(epsilon=1e-9))
    assert a.shape == x.shape and a.dtype == np.float32
    metric = quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=8, perturb_baseline=0.0,
                                             similarity_func=quantus.similarity_func.correlation_pearson,
                                             abs=False, return_aggregate=False, disable_warnings=True,
                                             normalise=False)
    scores = metric(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=quantus_explain_func,
                    explain_func_kwargs={"config": LRPConfig(epsilon=1e-9)}, device="cpu", channel_first=True)
    assert np.allclose(scores, 1.0, atol=1e-4), scores
    reduced = quantus_explain_func(model, x, y, reduce_channels=True)
    assert reduced.shape == (4, 1, 4, 4)
