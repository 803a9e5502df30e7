"""Installed into the virtual environment by scripts/setup.sh (with a ``.pth`` line that imports it at start-up).

The PyPI torchvision wheel is built against CUDA torch; beside the CPU build of torch that this project pins, its C++
ops fail to register and ``import torchvision`` (so timm, transformers' model classes, zennit, LXT...) fails with
``operator torchvision::nms does not exist``. This waits, at no start-up cost, for the first import of torchvision
and runs :func:`dynamiclrp.zoo.ensure_torchvision_importable` just before it (a no-op where torchvision works).
"""
import sys


class _TorchvisionShim:
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)  # once; and the shim's own look-up of torchvision must not come back here
            try:
                from dynamiclrp.zoo import ensure_torchvision_importable

                ensure_torchvision_importable()
            except Exception:  # never break an import: torchvision then fails with its own message
                pass
        return None


sys.meta_path.insert(0, _TorchvisionShim())
