"""Faithfulness evaluation of dynamiclrp against baselines and peers on real pretrained weights and on
ground-truth tasks trained in-repo (issue 9): the library half of ``dynamiclrp eval`` and
``benchmarks/faithfulness.py``.

* :mod:`.tasks` -- task definitions (:func:`build`, :data:`TASKS`, :data:`SIZES`);
* :mod:`.methods` -- dynamiclrp presets, Captum, Zennit, autoLRP, random behind ``fn(inputs, target)``;
* :mod:`.runner` -- held-out rule selection, the run loop, sharding over ``torch.distributed``;
* :mod:`.report` -- JSON, PNG curves, the markdown table;
* :mod:`.data`, :mod:`.models` -- offline data and the small models trained here.
"""
from .methods import ensure_vision
from .runner import MethodResult, evaluate_split, init_distributed, run_task, select
from .tasks import SIZES, TASKS, Task, build

__all__ = ["ensure_vision", "Task", "TASKS", "SIZES", "build", "run_task", "select", "evaluate_split",
           "init_distributed", "MethodResult"]
