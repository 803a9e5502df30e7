"""Test setup. The PyPI torchvision wheel is built against CUDA torch; beside the CPU build its C++ ops fail to
register, so define the two op schemas it looks up before anything imports it (test environments only)."""
import pytest
import torch


def _shim_torchvision_ops():
    try:
        torch.ops.torchvision.nms  # noqa: B018
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _shim_torchvision_ops.lib = lib  # keep the library alive


_shim_torchvision_ops()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
