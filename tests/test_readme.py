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


def test_committed_results_name_no_directory_of_a_machine():
    """Results and docs get read on other machines: a path of the measuring machine
    (/work/..., /root/..., /tmp/..., /home/...) says nothing there; record it relative to the
    repository (experiments.files.command_line / repo_relative)."""
    machine_path = re.compile(r"(?<![\w.~-])/(?:work|root|tmp|home|Users)/")
    paths = [README, *glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True),
             *glob.glob(os.path.join(ROOT, "docs", "**", "*.json"), recursive=True),
             *glob.glob(os.path.join(ROOT, "configs", "**", "*.json"), recursive=True)]
    found = [(os.path.relpath(p, ROOT), m.group(0)) for p in paths
             for m in machine_path.finditer(open(p, encoding="utf-8").read())]
    assert not found, found[:5]
