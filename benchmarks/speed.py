"""Speed and peak memory of dynamiclrp against gradient x input and Zennit, on demand (not a test).

    .venv/bin/python benchmarks/speed.py [--repeat 5]

Prints one row per model: median seconds per explanation, ratio to gradient x input, and Zennit where it applies
(CNNs). Peak memory is the growth of the process's peak RSS during the method's runs (coarse, CPU only). The
last column is the cost of recording constants (``ConstantRecorder``, part of every explanation): a forward pass
under the recorder over a plain forward pass with grad.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
import conftest  # noqa: E402,F401  (torchvision op-schema shim)
import torchvision  # noqa: E402
import transformers  # noqa: E402

from dynamiclrp import LRP, ConstantRecorder  # noqa: E402


def _timed(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def forward_with_grad(model, x, record=False):
    x = x.detach().requires_grad_()
    if not record:
        return model(x)
    with ConstantRecorder():
        return model(x)


def grad_x_input(model, x, target):
    x = x.detach().requires_grad_()
    out = model(x)
    out = out.logits if hasattr(out, "logits") else out
    sel = out[:, -1, target] if out.dim() == 3 else out[:, target]
    (g,) = torch.autograd.grad(sel.sum(), x)
    return g * x


def zennit_epsilon(model, x, target):
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon, Pass
    from zennit.types import Activation, Convolution, Linear

    composite = LayerMapComposite([(Activation, Pass()), (Convolution, Epsilon()), (Linear, Epsilon())])
    with Gradient(model=model, composite=composite) as attributor:
        out = model(x)
        onehot = torch.zeros_like(out)
        onehot[:, target] = 1
        return attributor(x, onehot)[1]


def models():
    yield "vgg11 64px", torchvision.models.vgg11().eval(), torch.randn(1, 3, 64, 64), True
    yield "resnet18 64px", torchvision.models.resnet18().eval(), torch.randn(1, 3, 64, 64), True
    cfg = transformers.GPT2Config(n_layer=4, n_head=4, n_embd=128, vocab_size=1000, bos_token_id=0, eos_token_id=0)
    gpt = transformers.GPT2LMHeadModel(cfg).eval()
    emb = gpt.get_input_embeddings()(torch.randint(0, 1000, (1, 32))).detach()
    yield "gpt2 4x128 seq32", lambda e: gpt(inputs_embeds=e), emb, False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"{'model':<20} {'grad*input s':>13} {'dynamiclrp s':>13} {'ratio':>7} {'zennit s':>9} {'ratio':>7} "
          f"{'peak +MiB':>9} {'recorder':>8}")
    target = 1
    for name, model, x, cnn in models():
        lrp = LRP(model)
        lrp_target = target if cnn else (-1, target)
        t_grad = _timed(lambda m=model, x=x: grad_x_input(m, x, target), args.repeat)
        before = _peak_kib()
        t_lrp = _timed(lambda lrp=lrp, x=x, t=lrp_target: lrp.attribute(x, target=t), args.repeat)
        peak = (_peak_kib() - before) / 1024
        t_zen = _timed(lambda m=model, x=x: zennit_epsilon(m, x, target), args.repeat) if cnn else float("nan")
        t_fwd = _timed(lambda m=model, x=x: forward_with_grad(m, x), args.repeat)
        t_rec = _timed(lambda m=model, x=x: forward_with_grad(m, x, record=True), args.repeat)
        print(f"{name:<20} {t_grad:>13.4f} {t_lrp:>13.4f} {t_lrp / t_grad:>7.1f} {t_zen:>9.4f} "
              f"{t_zen / t_grad:>7.1f} {peak:>9.1f} {t_rec / t_fwd:>7.2f}x")


if __name__ == "__main__":
    main()
