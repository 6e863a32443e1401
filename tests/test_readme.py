"""The README's odeint_ext example runs as printed."""

import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_odeint_ext_example_runs():
    code = re.findall(r"```python\n(.*?)```", open(README).read(), re.S)[0]
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["stats"].nfe_forward > 0 and scope["stats"].nfe_backward > 0
    assert scope["enc"].grad.abs().sum() > 0 and scope["q"].weight.grad is not None
