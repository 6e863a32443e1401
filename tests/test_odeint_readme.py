"""docs/odeint_ext.md's migration example runs as printed and does what it says
(tests/test_readme.py runs the page's first example)."""

import os
import re

PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "odeint_ext.md")


def _section_blocks():
    return re.findall(r"```python\n(.*?)```", open(PAGE).read(), re.S)


def test_migration_example_results():
    blocks = _section_blocks()
    assert len(blocks) == 3  # a new block needs a test of its own (the third: test_error_estimate.py)
    code = blocks[1]
    assert "from torchdiffeq import" in code
    scope = {}
    exec(compile(code, "docs/odeint_ext.md", "exec"), scope)
    f, stats = scope["f"], scope["stats"]
    assert 0 < float(scope["t_ext"].detach()) < 10 and abs(float(scope["y_ext"][-1].detach().sum()) - 0.5) < 1e-4
    assert stats.nfe_forward > 0 and stats.nfe_backward > 0
    assert scope["drive"].grad is not None and scope["drive"].grad > 0
    assert f.k.grad is not None and (f.k.grad != 0).all()
