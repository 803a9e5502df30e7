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
