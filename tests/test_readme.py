"""The front door and the docs: the odeint_ext example runs as printed, the README's Docs map
lists every page of docs/, and every relative link in the README and docs/ leads somewhere."""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
ODEINT_DOC = os.path.join(ROOT, "docs", "odeint_ext.md")


def test_readme_odeint_ext_example_runs():
    code = re.findall(r"```python\n(.*?)```", open(ODEINT_DOC).read(), re.S)[0]
    scope = {}
    exec(compile(code, "docs/odeint_ext.md", "exec"), scope)
    assert scope["stats"].nfe_forward > 0 and scope["stats"].nfe_backward > 0
    assert scope["enc"].grad.abs().sum() > 0 and scope["q"].weight.grad is not None


def test_docs_map_lists_every_page_once():
    text = open(README, encoding="utf-8").read()
    docs_map = text.split("\n## Docs\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| \[docs/([^\]]+\.md)\]", docs_map, re.M)
    pages = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    assert sorted(listed) == pages and len(set(listed)) == len(listed)


def test_relative_links_resolve():
    for path in [README, *glob.glob(os.path.join(ROOT, "docs", "*.md"))]:
        text = open(path, encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert os.path.exists(os.path.join(os.path.dirname(path), target)), (path, target)
