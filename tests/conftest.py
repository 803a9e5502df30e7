"""Test setup. The PyPI torchvision wheel is built against CUDA torch; beside the CPU build its C++ ops fail to
register, so the op schemas it looks up are defined before anything imports it (see
:func:`dynamiclrp.zoo.ensure_torchvision_importable`; a no-op where torchvision works as is)."""
import pytest
import torch

from dynamiclrp.zoo import ensure_torchvision_importable

ensure_torchvision_importable()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
