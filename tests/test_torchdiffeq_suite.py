"""torchdiffeq's own test files, run against odeint_ext: the drop-in claim as a test.

The files are not part of this repository (nor of torchdiffeq's sdist, which has no tests/):
they are read from $TORCHDIFFEQ_TESTS (a directory holding torchdiffeq's tests/*.py), else
from a cache directory, else downloaded once from GitHub at the commit released as 0.2.5.
Each file is loaded as a module whose global ``torchdiffeq`` is replaced by a namespace in
which ``odeint``, ``odeint_adjoint`` and ``odeint_event`` are odeint_ext's; the tests skip
when the files cannot be obtained. The quick cases run by default, whole files with -m slow.
"""

import importlib.util
import os
import sys
import types
import unittest
import urllib.request

import pytest
import torchdiffeq

from odeint_ext import odeint_adjoint_ext, odeint_event_ext, odeint_ext

COMMIT = "a88aac53cae738addee44251288ce5be9a018af3"  # torchdiffeq "upd version" to 0.2.5
URL = f"https://raw.githubusercontent.com/rtqichen/torchdiffeq/{COMMIT}/tests/{{}}.py"
FILES = ("problems", "api_tests", "event_tests", "gradient_tests", "norm_tests", "odeint_tests")
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                     "node-transformer", f"torchdiffeq-tests-{COMMIT[:12]}")


def _tests_dir() -> str:
    """A directory holding torchdiffeq 0.2.5's test files, or a skip saying why there is none."""
    given = os.environ.get("TORCHDIFFEQ_TESTS")
    if given:
        missing = [f for f in FILES if not os.path.isfile(os.path.join(given, f + ".py"))]
        if missing:
            pytest.fail(f"TORCHDIFFEQ_TESTS={given} lacks {', '.join(missing)}.py")
        return given
    try:
        os.makedirs(CACHE, exist_ok=True)
        for name in FILES:
            path = os.path.join(CACHE, name + ".py")
            if not os.path.isfile(path):
                with urllib.request.urlopen(URL.format(name), timeout=10) as response:
                    text = response.read()
                with open(path + ".part", "wb") as f:
                    f.write(text)
                os.replace(path + ".part", path)
    except OSError as e:
        pytest.skip(f"torchdiffeq's test files are not obtainable ({e}); set TORCHDIFFEQ_TESTS")
    return CACHE


@pytest.fixture(scope="module")
def calls():
    """Calls that reached odeint_ext through the substituted namespace, by function."""
    return {}


def _load(name, calls, monkeypatch, substitute=True):
    """torchdiffeq's test module ``name``, with odeint_ext in the place of torchdiffeq (or,
    ``substitute=False``, as it is: the reference)."""
    directory = _tests_dir()
    monkeypatch.syspath_prepend(directory)  # the files import their ``problems``
    monkeypatch.delitem(sys.modules, "problems", raising=False)

    def counted(fn):
        def call(*args, **kwargs):
            calls[fn.__name__] = calls.get(fn.__name__, 0) + 1
            return fn(*args, **kwargs)
        return call

    shim = types.ModuleType("torchdiffeq")
    shim.__dict__.update({k: v for k, v in vars(torchdiffeq).items() if not k.startswith("__")})
    shim.odeint = counted(odeint_ext)
    shim.odeint_adjoint = counted(odeint_adjoint_ext)
    shim.odeint_event = counted(odeint_event_ext)
    spec = importlib.util.spec_from_file_location(f"torchdiffeq_tests_{name}",
                                                  os.path.join(directory, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if substitute:
        module.torchdiffeq = shim  # looked up at call time by every test
    return module


def _failures(module, names=None):
    """{test id without the module (subtests included): last line of its error}."""
    loader = unittest.TestLoader()
    suite = (loader.loadTestsFromNames(names, module) if names
             else loader.loadTestsFromModule(module))
    result = unittest.TestResult()
    suite.run(result)
    assert result.testsRun > 0
    return {test.id().split(".", 1)[1]: trace.strip().splitlines()[-1]
            for test, trace in result.failures + result.errors}


def _run(name, calls, monkeypatch, names=None):
    """Every check of the file that passes with torchdiffeq must pass with odeint_ext: a
    failure is re-run with torchdiffeq itself, and excused only where that fails the same."""
    failed = _failures(_load(name, calls, monkeypatch), names)
    assert calls, "no call reached odeint_ext"
    if failed:
        methods = sorted({test.split(" ")[0] for test in failed})
        own = _failures(_load(name, {}, monkeypatch, substitute=False), methods)
        failed = {test: error for test, error in failed.items() if own.get(test) != error}
    assert not failed, f"{len(failed)} of torchdiffeq's checks failed with odeint_ext only:\n" + \
        "\n".join(f"{test}: {error}" for test, error in failed.items())


QUICK = {
    "norm_tests": ["TestNorms.test_adjoint_norm", "TestNorms.test_norm"],
    "api_tests": None,
}


@pytest.mark.parametrize("name", sorted(QUICK))
def test_torchdiffeq_quick_cases_pass_with_odeint_ext(name, calls, monkeypatch):
    _run(name, calls, monkeypatch, QUICK[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", [f for f in FILES if f != "problems"])
def test_torchdiffeq_test_files_pass_with_odeint_ext(name, calls, monkeypatch):
    """(odeint_tests' TestMinMaxStep fails with torchdiffeq itself here: scipy's LSODA makes
    191 evaluations where the test expects fewer than 50.)"""
    _run(name, calls, monkeypatch)
