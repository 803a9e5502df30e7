"""Speed and memory of dynamiclrp against gradient x input and the other LRP libraries (``dynamiclrp bench``).

For each model (VGG-16, ResNet-50, ViT-B/16, BERT-base, GPT-2 small, a ~100M Llama; random weights, eval mode) and
batch size, three measurements:

* **time** -- interleaved rounds on one torch thread: after ``warmup`` calls of every method, each round calls
  every method once (the order rotates from round to round) and divides its time by gradient x input's time *in
  the same round*; a method's ratio is the median of its per-round ratios, so a load change on a shared machine
  hits the method and its reference together. Reported: ``ratio = median_r(t_method[r] / t_gxi[r])``.
* **peak memory** -- per method in a fresh process (a fork of a parent that only built the model): release freed
  heap (``malloc_trim``), reset the kernel's high-water mark (write ``5`` to ``/proc/self/clear_refs``), call the
  method once, read ``VmHWM`` from ``/proc/self/status`` (``ru_maxrss`` cannot be reset, so it would report the
  model-construction peak). Reported: the peak above the resident set just before the call (the method's working
  memory, ``peak_mib``) and its ratio to gradient x input's.
* **growth** -- in a fresh process, the resident set after each of ``growth`` repeated dynamiclrp explanations
  (after ``gc.collect()`` and ``malloc_trim``: flat when nothing is held across calls; also without the trim, which
  includes what the allocator keeps for reuse, and the running peak).

Methods: ``forward`` (with grad), ``recorded_forward`` (the forward pass under :class:`ConstantRecorder`, part of
every explanation), ``grad_x_input`` (the reference), ``dynamiclrp_first`` (a new :class:`LRP` object per call),
``dynamiclrp_repeated`` (one :class:`LRP` object reused, where plans may be cached), and the peers where they
support the model: Zennit 0.5.1 (``EpsilonPlus`` with its canonizers, CNNs), Captum's ``LRP``, autoLRP
(``pip install autolrp``) and LXT's efficient AttnLRP (it needs ``transformers<5``: it runs in ``.venv-lxt``,
made by ``scripts/lxt_env.sh``, in two worker processes -- patched and unpatched -- called in alternation, so its
ratio is taken against gradient x input in that same environment). A peer that does not support a model, is not
installed or fails is listed with the reason instead of a number.

Configurations: CNNs use Zennit's ``EpsilonPlus`` (``presets.epsilon_plus``, autoLRP's ``LRPConfig.composite()``,
Captum's default rules), transformers AttnLRP (``presets.attnlrp``, autoLRP's ``ATTNLRP``, LXT's ``attnLRP``;
LXT's torchvision ViT map is its CP-LRP one). Language models are explained at ``inputs_embeds`` (the float input
all libraries share), target token ``TARGET`` at the last position; classifiers class ``TARGET``.

This module imports only the standard library and torch at import time, so an LXT worker can load it by path in
another environment (:func:`lxt_worker`).
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

MODELS = ("vgg16", "resnet50", "vit_b_16", "bert", "gpt2", "llama")
CNNS = ("vgg16", "resnet50")
LANGUAGE_MODELS = ("gpt2", "llama")
PEERS = ("zennit", "captum", "autolrp", "lxt")
METHODS = ("forward", "recorded_forward", "grad_x_input", "dynamiclrp_first", "dynamiclrp_repeated") + PEERS
REFERENCE = "grad_x_input"
#: methods whose peak memory is measured (``dynamiclrp_repeated`` shares the first call's peak)
MEMORY_METHODS = ("forward", "grad_x_input", "dynamiclrp_first", "zennit", "captum", "autolrp")
TARGET = 1
#: (image side in pixels, tokens) of the full and the quick mode
SIZES = {False: (224, 128), True: (32, 8)}
DEFAULT_LXT_PYTHON = Path(__file__).resolve().parents[2] / ".venv-lxt" / "bin" / "python"


@dataclass(frozen=True)
class BenchConfig:
    """What :func:`run` measures; validated when built.

    Parameters
    ----------
    models: names from :data:`MODELS`.
    batches: batch sizes.
    rounds: timed rounds per (model, batch) after warm-up (the issue asks for >= 5; fewer only for smoke tests).
    warmup: untimed calls of every method before the rounds.
    quick: tiny models (32 px images, 8 tokens, two-layer transformers) for tests.
    memory: measure each method's peak memory in a fresh process.
    growth: repeated dynamiclrp explanations whose resident set is recorded (0: none).
    peers: libraries to compare with, from :data:`PEERS`.
    lxt_python: interpreter of the LXT environment (``None``: ``.venv-lxt/bin/python`` of the checkout).
    """

    models: tuple = MODELS
    batches: tuple = (1, 8)
    rounds: int = 5
    warmup: int = 1
    quick: bool = False
    memory: bool = True
    growth: int = 3
    peers: tuple = PEERS
    lxt_python: str | None = None

    def __post_init__(self):
        for field_name, given, valid in (("models", self.models, MODELS), ("peers", self.peers, PEERS)):
            unknown = [m for m in given if m not in valid]
            if unknown:
                raise ValueError(f"unknown {field_name} {unknown}; choose from {list(valid)}")
        if not self.models:
            raise ValueError(f"no models given; choose from {list(MODELS)}")
        if not self.batches or any(not isinstance(b, int) or b < 1 for b in self.batches):
            raise ValueError(f"batches must be positive integers, got {self.batches!r}")
        if self.rounds < 1 or self.warmup < 0 or self.growth < 0:
            raise ValueError(f"need rounds >= 1, warmup >= 0, growth >= 0 (got {self.rounds}, {self.warmup}, "
                             f"{self.growth})")


# ------------------------------------------------------------------------------------------------ memory (Linux)


def read_status(field: str = "VmHWM", path: str = "/proc/self/status") -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmHWM``: peak resident set, ``VmRSS``: resident set), in KiB.

    Raises
    ------
    RuntimeError: the file has no such field (not Linux, or a kernel without it).
    """
    with open(path) as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{path} has no {field} line: peak memory needs Linux's /proc (run with --no-memory)")


def release_heap() -> None:
    """Collect garbage and give freed heap back to the OS (glibc ``malloc_trim``; a no-op elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> None:
    """Reset the kernel's high-water mark of this process to its current resident set (``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def measure_peak(fn: Callable[[], object]) -> dict:
    """Call ``fn`` once and return its memory: ``base_kib`` (resident set before, after :func:`release_heap`),
    ``hwm_kib`` (peak resident set during the call) and ``peak_kib = hwm_kib - base_kib``."""
    release_heap()
    reset_peak()
    base = read_status("VmRSS")
    fn()
    hwm = read_status("VmHWM")
    return {"base_kib": base, "hwm_kib": hwm, "peak_kib": max(hwm - base, 0)}


def measure_growth(fn: Callable[[], object], n: int) -> dict:
    """Memory (KiB) before and after each of ``n`` calls of ``fn``: ``rss`` (resident set after
    :func:`release_heap`: what is still referenced), ``untrimmed`` (after ``gc.collect()`` only: also what the
    allocator keeps for reuse) and ``hwm`` (peak resident set so far, from the first call on)."""
    release_heap()
    reset_peak()
    out = {"rss": [read_status("VmRSS")], "untrimmed": [read_status("VmRSS")], "hwm": [read_status("VmHWM")]}
    for _ in range(n):
        fn()
        gc.collect()
        out["untrimmed"].append(read_status("VmRSS"))
        out["hwm"].append(read_status("VmHWM"))
        release_heap()
        out["rss"].append(read_status("VmRSS"))
    return out


def in_fork(fn: Callable[[], object], timeout: float = 3600.0):
    """Run ``fn`` in a forked child and return its (picklable) result; an exception in the child is re-raised
    here as ``RuntimeError`` with the child's traceback. The fork shares the parent's built model copy-on-write
    and has run nothing else: a fresh process as far as the method's memory goes."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def target():
        # a forked child must not enter the parent's OpenMP thread pool (its threads did not survive the fork:
        # GOMP then waits forever); measurements run on one torch thread anyway
        torch.set_num_threads(1)
        try:
            child.send(("ok", fn()))
        except BaseException:  # report everything to the parent, the child exits anyway
            child.send(("error", traceback.format_exc()))

    proc = ctx.Process(target=target)
    proc.start()
    try:
        if not parent.poll(timeout):
            raise RuntimeError(f"forked measurement gave no answer in {timeout:.0f} s")
        status, value = parent.recv()
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    if status == "error":
        raise RuntimeError(f"forked measurement failed:\n{value}")
    return value


# ------------------------------------------------------------------------------------------------ timing


def interleaved(methods: dict, rounds: int, warmup: int = 1, clock: Callable[[], float] = time.perf_counter,
                before: Callable[[], object] = gc.collect) -> dict:
    """Seconds of each call of each method over ``rounds`` interleaved rounds, after ``warmup`` untimed calls.

    Round ``r`` calls the methods in their order rotated by ``r`` (no method is always first after another's
    garbage). ``before`` runs untimed before every call. Returns ``{name: [seconds of round 0, 1, ...]}``.
    """
    names = list(methods)
    for _ in range(warmup):
        for name in names:
            methods[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            before()
            start = clock()
            methods[name]()
            times[name].append(clock() - start)
    return times


def ratios(times: dict, reference: str = REFERENCE) -> dict:
    """Per method: ``median_s`` (median seconds), ``ratios`` (``t[r] / t_reference[r]`` per round ``r``) and
    ``ratio`` (their median), from :func:`interleaved`'s times."""
    ref = times[reference]
    out = {}
    for name, ts in times.items():
        per_round = [t / max(tr, 1e-12) for t, tr in zip(ts, ref)]
        out[name] = {"median_s": statistics.median(ts), "ratio": statistics.median(per_round),
                     "ratios": per_round, "times": list(ts)}
    return out


# ------------------------------------------------------------------------------------------------ models


class LogitsOf(torch.nn.Module):
    """``x -> logits``: a Hugging Face model called with ``inputs_embeds=x`` (the shared float input of every
    library), returning the logits tensor. The wrapped model is not changed."""

    def __init__(self, model: torch.nn.Module, causal: bool):
        super().__init__()
        self.model = model
        self.causal = causal

    def forward(self, x):
        kwargs = {"use_cache": False} if self.causal else {}
        return self.model(inputs_embeds=x, **kwargs).logits


def _torchvision():
    try:
        from .zoo import ensure_torchvision_importable
    except ImportError:  # loaded by path in another environment (LXT's has its own shim)
        pass
    else:
        try:
            ensure_torchvision_importable()
        except RuntimeError as err:  # a start-up shim (scripts/setup.sh) registered the op schemas meanwhile
            if "TORCH_LIBRARY" not in str(err):
                raise
    import torchvision

    return torchvision


def _hf(family: str, config_name: str, model_name: str, **kwargs):
    import importlib

    modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")  # LXT may swap classes
    config = getattr(importlib.import_module(f"transformers.models.{family}"), config_name)(**kwargs)
    return getattr(modeling, model_name)(config)


def _vit(quick: bool):
    tv = _torchvision()
    if not quick:
        return tv.models.vit_b_16()
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=10)


def build_model(name: str, quick: bool = False, seed: int = 0) -> torch.nn.Module:
    """The random-weight model ``name`` (eval mode) as a module ``x -> logits`` (``x``: images, or the input
    embeddings of a text model, see :func:`make_input`). Quick mode: the same architecture, tiny."""
    torch.manual_seed(seed)
    if name == "vit_b_16":
        model = _vit(quick)
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises it: all-0 logits
        return model.eval()
    if name in CNNS:
        tv = _torchvision()
        if not quick:
            return getattr(tv.models, name)().eval()
        if name == "vgg16":
            from torchvision.models.vgg import VGG, make_layers

            model = VGG(make_layers([8, 8, "M", 16, 16, "M", 16, "M"]), num_classes=10, init_weights=True)
            model.avgpool = torch.nn.AdaptiveAvgPool2d((2, 2))
            model.classifier = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(),
                                                   torch.nn.Linear(32, 10))
            return model.eval()
        if name == "resnet50":
            from torchvision.models.resnet import Bottleneck, ResNet

            return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, width_per_group=16).eval()
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    if name == "bert":
        kwargs = dict(tiny, vocab_size=100, max_position_embeddings=64) if quick else {}
        model = _hf("bert", "BertConfig", "BertForSequenceClassification", num_labels=2, **kwargs)
        return LogitsOf(model.eval(), causal=False).eval()
    if name == "gpt2":
        kwargs = (dict(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64) if quick
                  else {})
        model = _hf("gpt2", "GPT2Config", "GPT2LMHeadModel", bos_token_id=0, eos_token_id=0, **kwargs)
        return LogitsOf(model.eval(), causal=True).eval()
    if name == "llama":  # ~106M parameters: 8 layers of width 768, vocabulary 32000, untied head
        kwargs = (dict(tiny, vocab_size=100, num_key_value_heads=2, max_position_embeddings=64) if quick else
                  dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
                       num_key_value_heads=12, vocab_size=32000, max_position_embeddings=512))
        model = _hf("llama", "LlamaConfig", "LlamaForCausalLM", **kwargs)
        return LogitsOf(model.eval(), causal=True).eval()
    raise ValueError(f"unknown model {name!r}; choose from {list(MODELS)}")


def make_input(name: str, model: torch.nn.Module, batch: int, quick: bool = False, seed: int = 1) -> torch.Tensor:
    """The float input of ``model``: images ``[batch, 3, S, S]``, or the input embeddings ``[batch, T, hidden]``
    of random token ids (detached)."""
    side, tokens = SIZES[quick]
    gen = torch.Generator().manual_seed(seed)
    if name in CNNS or name == "vit_b_16":
        return torch.randn(batch, 3, side, side, generator=gen)
    emb = model.model.get_input_embeddings()
    ids = torch.randint(0, emb.num_embeddings, (batch, tokens), generator=gen)
    with torch.no_grad():
        return emb(ids).detach()


def selected(logits: torch.Tensor) -> torch.Tensor:
    """The explained logits of every sample: class :data:`TARGET`, or token :data:`TARGET` at the last position."""
    return logits[:, -1, TARGET] if logits.dim() == 3 else logits[:, TARGET]


def grad_x_input(model, x):
    """Gradient x input of :func:`selected` (the reference every ratio is taken against)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(selected(model(x)).sum(), x)
    return g * x


def forward(model, x):
    """The forward pass with grad enabled (the graph is built, no backward)."""
    with torch.enable_grad():
        return model(x.detach().requires_grad_(True))


# ------------------------------------------------------------------------------------------------ methods


def dynamiclrp_config(name: str):
    """The configuration dynamiclrp is timed with: Zennit's EpsilonPlus for CNNs, AttnLRP for transformers."""
    from .presets import attnlrp, epsilon_plus

    return epsilon_plus() if name in CNNS else attnlrp()


def dynamiclrp_target(name: str, x: torch.Tensor):
    return (x.shape[1] - 1, TARGET) if name in LANGUAGE_MODELS else TARGET


def make_methods(name: str, model, x, peers=PEERS) -> tuple:
    """``({method: zero-argument callable}, {method: why it is not measured})`` for the in-process methods."""
    from .api import LRP
    from .constants import ConstantRecorder

    config = dynamiclrp_config(name)
    target = dynamiclrp_target(name, x)
    reused = LRP(model, config)

    def recorded_forward():
        with torch.enable_grad(), ConstantRecorder():
            return model(x.detach().requires_grad_(True))

    methods = {
        "forward": lambda: forward(model, x),
        "recorded_forward": recorded_forward,
        "grad_x_input": lambda: grad_x_input(model, x),
        "dynamiclrp_first": lambda: LRP(model, config).explain(x, target=target, conservation_limit=None),
        "dynamiclrp_repeated": lambda: reused.explain(x, target=target, conservation_limit=None),
    }
    skipped = {}
    for peer in peers:
        if peer == "lxt":
            continue
        try:
            methods[peer] = PEER_FACTORIES[peer](name, model, x)
        except _Unsupported as why:
            skipped[peer] = str(why)
    return methods, skipped


class _Unsupported(Exception):
    """A peer does not support a model, or is not installed."""


def _zennit(name, model, x):
    if name not in CNNS:
        raise _Unsupported("no Zennit rules or canonizers for attention, layer norms and embeddings")
    try:
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlus
        from zennit.torchvision import ResNetCanonizer, VGGCanonizer
    except ImportError as err:
        raise _Unsupported(f"zennit is not installed ({err})") from None
    canonizer = VGGCanonizer if name == "vgg16" else ResNetCanonizer
    with torch.no_grad():
        classes = model(x[:1]).shape[-1]

    def explain():
        onehot = torch.zeros(x.shape[0], classes)
        onehot[:, TARGET] = 1
        # hooks and canonizers live only inside the context: the model is shared with the other methods
        with Gradient(model=model, composite=EpsilonPlus(canonizers=[canonizer()])) as attributor:
            return attributor(x, onehot)[1]

    return explain


def _captum(name, model, x):
    try:
        from captum.attr import LRP as CaptumLRP
    except ImportError as err:
        raise _Unsupported(f"captum is not installed ({err})") from None
    return lambda: CaptumLRP(model).attribute(x.detach().clone().requires_grad_(True), target=TARGET)


def _autolrp(name, model, x):
    try:
        import autolrp
    except ImportError as err:
        raise _Unsupported(f"autolrp is not installed ({err}; pip install autolrp)") from None
    config = autolrp.LRPConfig.composite() if name in CNNS else autolrp.LRPConfig(
        rule={**autolrp.BASE, **autolrp.ATTNLRP})

    def explain():
        xa = autolrp.tensor(x)
        with torch.enable_grad():
            selected(model(xa)).sum().lrp(config=config)
        return xa.relevance

    return explain


PEER_FACTORIES = {"zennit": _zennit, "captum": _captum, "autolrp": _autolrp}


# ------------------------------------------------------------------------------------------------ LXT worker

#: model -> (module to patch, LXT map as "module:attribute")
LXT_MAPS = {"gpt2": ("transformers.models.gpt2.modeling_gpt2", "lxt.efficient.models.gpt2:attnLRP"),
            "llama": ("transformers.models.llama.modeling_llama", "lxt.efficient.models.llama:attnLRP"),
            "bert": ("transformers.models.bert.modeling_bert", "lxt.efficient.models.bert:attnLRP"),
            "vit_b_16": ("torchvision.models.vision_transformer", "lxt.efficient.models.vit_torch:cp_LRP")}


def lxt_worker(argv=None) -> None:
    """Worker in the LXT environment: ``--model NAME --batch B [--quick] [--patched]``. Builds the model (patched
    by LXT's efficient map first when ``--patched``), measures one call's peak memory, prints a JSON line, then
    answers each ``run`` line on stdin with the seconds of one call (LXT's relevance is gradient x input of the
    patched model, so both workers run :func:`grad_x_input`)."""
    import importlib

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--patched", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    info = {}
    if args.patched:
        if args.model in CNNS or args.model == "vit_b_16":
            _torchvision()
        from lxt.efficient import monkey_patch

        target, spec = LXT_MAPS[args.model]
        mod, attr = spec.split(":")
        monkey_patch(importlib.import_module(target), getattr(importlib.import_module(mod), attr))
        info["map"] = spec
    model = build_model(args.model, args.quick)
    x = make_input(args.model, model, args.batch, args.quick)
    import transformers

    info["transformers"] = transformers.__version__
    grad_x_input(model, x)  # warm, as in the main environment
    info["memory"] = in_fork(lambda: measure_peak(lambda: grad_x_input(model, x)))
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        gc.collect()
        start = time.perf_counter()
        grad_x_input(model, x)
        print(json.dumps({"t": time.perf_counter() - start}), flush=True)


class _Worker:
    def __init__(self, python: str, name: str, batch: int, quick: bool, patched: bool):
        code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('_dynamiclrp_bench', "
                f"{str(Path(__file__).resolve())!r}); m = importlib.util.module_from_spec(spec); "
                "sys.modules[spec.name] = m; spec.loader.exec_module(m); m.lxt_worker(sys.argv[1:])")
        cmd = [python, "-c", code, "--model", name, "--batch", str(batch)] + ["--quick"] * quick + \
            ["--patched"] * patched
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            raise RuntimeError(f"LXT worker failed: {err.strip().splitlines()[-1] if err.strip() else 'no output'}")
        return json.loads(line)

    def __call__(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._read()["t"]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def run_lxt(name: str, batch: int, config: BenchConfig, clock=None) -> dict:
    """LXT's efficient mode against gradient x input in LXT's environment: two workers called in alternation
    (their own timings, so no process overhead). Returns rows keyed ``lxt_grad_x_input`` and ``lxt``, or a
    ``skipped`` reason."""
    if name not in LXT_MAPS:
        return {"skipped": "LXT's efficient mode ships no map for CNNs"}
    python = config.lxt_python or str(DEFAULT_LXT_PYTHON)
    if not Path(python).exists():
        return {"skipped": f"no LXT environment at {python} (make it with scripts/lxt_env.sh)"}
    workers = {}
    try:
        workers["lxt_grad_x_input"] = _Worker(python, name, batch, config.quick, patched=False)
        workers["lxt"] = _Worker(python, name, batch, config.quick, patched=True)
        for _ in range(config.warmup):
            for w in workers.values():
                w()
        times = {k: [] for k in workers}
        for r in range(config.rounds):
            order = list(workers)[r % 2:] + list(workers)[:r % 2]
            for k in order:
                times[k].append(workers[k]())
    except (RuntimeError, OSError, ValueError) as err:
        return {"skipped": f"LXT failed: {err}"}
    finally:
        for w in workers.values():
            w.close()
    summary = ratios(times, reference="lxt_grad_x_input")
    for k, w in workers.items():
        summary[k]["memory"] = w.info["memory"]
        summary[k]["environment"] = {"transformers": w.info.get("transformers"), "map": w.info.get("map")}
    return summary


# ------------------------------------------------------------------------------------------------ the benchmark


def machine() -> dict:
    """Where the benchmark ran: CPU, cores, memory, load, versions, torch threads."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "load_avg": load,
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "platform": platform.platform()}


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in ("dynamiclrp", "zennit", "captum", "autolrp", "transformers", "torchvision"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def run(config: BenchConfig, log: Callable[[str], object] = print) -> dict:
    """Run the benchmark; returns the JSON-able result (see the module doc): ``machine``, ``date``, ``config``,
    ``versions``, ``rows`` (one per model, batch and method) and ``growth``. Measures on one torch thread and
    gives the caller's thread count back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(config, log)
    finally:
        torch.set_num_threads(threads)


def _run(config: BenchConfig, log: Callable[[str], object]) -> dict:
    started = datetime.datetime.now(datetime.timezone.utc)
    result = {"date": started.isoformat(timespec="seconds"), "machine": machine(), "config": asdict(config),
              "versions": _versions(), "rows": [], "growth": []}
    side, tokens = SIZES[config.quick]
    for name in config.models:
        for batch in config.batches:
            size = f"{tokens} tokens" if name in ("bert", "gpt2", "llama") else f"{side} px"
            log(f"[bench] {name} batch {batch} ({size})")
            rows = _one(name, batch, config, result["growth"])
            for method, row in rows.items():
                result["rows"].append(dict(model=name, batch=batch, input=size, method=method, **row))
            release_heap()
    result["machine"]["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["seconds"] = round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1)
    return result


def _one(name: str, batch: int, config: BenchConfig, growth: list) -> dict:
    model = build_model(name, config.quick)
    x = make_input(name, model, batch, config.quick)
    methods, skipped = make_methods(name, model, x, config.peers)
    # the first warm-up call, before the memory forks (one-time initialisation is not a method's memory); a method
    # that fails on it (a peer that does not support the model) is listed with the error, not timed
    for method in list(methods):
        try:
            methods[method]()
        except Exception as err:  # a failure is a result to report, not a crash of the whole benchmark
            if method == REFERENCE:
                raise
            del methods[method]
            skipped[method] = f"fails: {type(err).__name__}: {str(err).splitlines()[0][:150] if str(err) else ''}"
    memory = {}
    if config.memory:  # before any timing, so each fork has only the built model
        for method in [m for m in MEMORY_METHODS if m in methods]:
            try:
                memory[method] = in_fork(lambda m=method: measure_peak(methods[m]))
            except RuntimeError as err:
                memory[method] = {"error": str(err).splitlines()[-1]}
        if config.growth and "dynamiclrp_repeated" in methods:
            mem = in_fork(lambda: measure_growth(methods["dynamiclrp_repeated"], config.growth))
            growth.append({"model": name, "batch": batch, "method": "dynamiclrp_repeated",
                           **{f"{k}_mib": [round(r / 1024, 1) for r in v] for k, v in mem.items()}})
    times = interleaved(methods, config.rounds, max(config.warmup - 1, 0))
    rows = ratios(times)
    methods.clear()  # free the model before LXT's workers build theirs
    model = x = None
    release_heap()
    ref_peak = memory.get(REFERENCE, {}).get("peak_kib")
    for method, row in rows.items():
        mem = memory.get(method if method != "dynamiclrp_repeated" else "dynamiclrp_first", {})
        _add_memory(row, mem, ref_peak)
    if "lxt" in config.peers:
        lxt = run_lxt(name, batch, config)
        if "skipped" in lxt:
            skipped["lxt"] = lxt["skipped"]
        else:
            ref = lxt["lxt_grad_x_input"]["memory"]["peak_kib"]
            for method in ("lxt_grad_x_input", "lxt"):
                _add_memory(lxt[method], lxt[method].pop("memory"), ref)
                rows[method] = lxt[method]
    for peer, why in skipped.items():
        rows[peer] = {"skipped": why}
    return rows


def _add_memory(row: dict, mem: dict, ref_peak) -> None:
    if "peak_kib" in mem:
        row["peak_mib"] = round(mem["peak_kib"] / 1024, 1)
        row["hwm_mib"] = round(mem["hwm_kib"] / 1024, 1)
        row["peak_ratio"] = mem["peak_kib"] / ref_peak if ref_peak else None
    elif "error" in mem:
        row["memory_error"] = mem["error"]


# ------------------------------------------------------------------------------------------------ report


def table(result: dict) -> str:
    """The result as one markdown table (machine and date above it), for the README and the terminal."""
    m = result["machine"]
    load = m.get("load_avg")
    lines = [f"Measured {result['date'][:10]} on {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB; "
             f"{m['torch_threads']} torch thread; torch {m['torch']}; load average at start "
             f"{load[0]:.1f}" + (f", end {m['load_avg_end'][0]:.1f}" if m.get("load_avg_end") else "")
             + f"), {result['config']['rounds']} interleaved rounds after {result['config']['warmup']} warm-up"
             + (", quick mode (tiny models)" if result["config"]["quick"] else "") + ".",
             "Time ×: median over rounds of (method / gradient×input in the same round), lowest–highest round in "
             "brackets; peak: working memory "
             "above the resident set before the call, fresh process; LXT rows: against gradient×input in LXT's "
             "environment (`lxt_grad_x_input`).", "",
             "| model | batch | input | method | median s | time × g×i (range) | peak MiB | peak × g×i | note |",
             "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for row in result["rows"]:
        if "skipped" in row:
            cells = ["", "", "", "", row["skipped"]]
        else:
            ratio = row.get("peak_ratio")
            spread = f" ({min(row['ratios']):.2f}–{max(row['ratios']):.2f})" if len(row["ratios"]) > 1 else ""
            cells = [f"{row['median_s']:.4f}", f"{row['ratio']:.2f}{spread}",
                     f"{row['peak_mib']:.1f}" if "peak_mib" in row else "",
                     f"{ratio:.2f}" if ratio is not None else "", row.get("memory_error", "")]
        lines.append(f"| {row['model']} | {row['batch']} | {row['input']} | {row['method']} | " + " | ".join(cells)
                     + " |")
    if result["growth"]:
        lines += ["", "Memory (MiB) before and after each repeated dynamiclrp explanation (one `LRP` object, fresh "
                  "process): resident set after `gc.collect()` + `malloc_trim` (held references), without the trim "
                  "(plus what the allocator keeps), and the peak so far:", "",
                  "| model | batch | RSS | RSS untrimmed | peak |", "| --- | ---: | --- | --- | --- |"]
        for g in result["growth"]:
            cells = [" → ".join(f"{r:.0f}" for r in g.get(k, [])) for k in ("rss_mib", "untrimmed_mib", "hwm_mib")]
            lines.append(f"| {g['model']} | {g['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dynamiclrp bench`` and ``benchmarks/bench.py``."""
    parser.add_argument("--quick", action="store_true", help="tiny models (32 px, 8 tokens) for a smoke test")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {','.join(MODELS)}")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each method first (default 1)")
    parser.add_argument("--growth", type=int, default=3, help="repeated explanations whose RSS is recorded")
    parser.add_argument("--no-memory", action="store_true", help="skip peak memory and growth")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, from {','.join(PEERS)} "
                                                                 "(empty: none)")
    parser.add_argument("--lxt-python", default=None, help="python of the LXT environment (default .venv-lxt)")
    parser.add_argument("--json", default="dynamiclrp-bench.json", help="where to write the JSON result")
    parser.add_argument("--markdown", default=None, help="also write the markdown table to this file")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    def names(text):
        return tuple(s.strip() for s in text.split(",") if s.strip())

    try:
        batches = tuple(int(b) for b in names(args.batches))
    except ValueError:
        raise ValueError(f"--batches takes comma-separated integers, got {args.batches!r}") from None
    return BenchConfig(models=names(args.models), batches=batches, rounds=args.rounds, warmup=args.warmup,
                       quick=args.quick, memory=not args.no_memory, growth=0 if args.no_memory else args.growth,
                       peers=names(args.peers), lxt_python=args.lxt_python)


def run_command(args: argparse.Namespace) -> int:
    """``dynamiclrp bench``: run, print the table, write the JSON (and the markdown)."""
    result = run(config_from_args(args), log=lambda s: print(s, file=sys.stderr, flush=True))
    text = table(result)
    print(text)
    Path(args.json).write_text(json.dumps(result, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dynamiclrp bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
