"""A solver chosen when a checkpoint is loaded (issue 37 item 4): settings that only shape
training (the error penalty, STEER) and method-specific ones the new method does not take
(--node-first-step under euler) must not stand between a user and fairseq-validate,
fairseq-generate, fairseq-interactive or the hub; what the chosen solver needs is checked."""

import os
import re

import pytest

from fairseq_helpers import SIZES, USER_DIR, cli, cli_runs, toy_data_bin, train_argv

ENV = {"OMP_NUM_THREADS": "1"}
MODEL = [*SIZES["tiny"], "--share-all-embeddings", "--dropout", "0.1"]
TRAINED_WITH = ["--node-encoder", "--node-decoder", "--node-first-step", "1",
                "--node-error-penalty", "0.1", "--node-steer-b", "0.25"]
EULER = "{'node_method': 'euler', 'node_steps': 1}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("solver_at_load")
    data, raw = toy_data_bin(root, 60, 10, 6, env=ENV)
    save = str(root / "ckpt")
    cli("fairseq-train", *train_argv(data, save, MODEL, *TRAINED_WITH, lr=5e-3, max_tokens=400,
                                     epochs=1), env=ENV)
    ckpt = os.path.join(save, "checkpoint_last.pt")
    common = ["--user-dir", USER_DIR, "--task", "node_translation", "--path", ckpt]
    with open(os.path.join(raw, "test.src")) as f:
        lines = f.read()

    def validate(name, overrides):
        return dict(name=name, tool="fairseq-validate",
                    argv=[data, *common, "--valid-subset", "valid", "--max-tokens", "400",
                          "--model-overrides", overrides])

    steps = [
        validate("validate-own", "{}"),
        validate("validate-euler", EULER),
        validate("validate-rk4x2", "{'node_method': 'rk4', 'node_steps': 2}"),
        validate("validate-bad-steps", "{'node_method': 'rk4', 'node_steps': 0}"),
        dict(name="generate-rk4", tool="fairseq-generate",
             argv=[data, *common, "--beam", "2", "--model-overrides",
                   "{'node_method': 'rk4', 'node_steps': 2}"]),
        dict(name="interactive-midpoint", tool="fairseq-interactive",
             argv=[data, *common, "--source-lang", "src", "--target-lang", "tgt", "--beam", "2",
                   "--input", os.path.join(raw, "test.src"), "--model-overrides",
                   "{'node_method': 'midpoint', 'node_steps': 1}"]),
    ]
    return data, save, lines, cli_runs(str(root / "runs"), steps, env=ENV)


def nfe(out, side):
    m = re.search(rf"nfe_{side}_fwd (\d+(?:\.\d+)?)", out)
    assert m, out[-2000:]
    return float(m.group(1))


def test_fairseq_validate_runs_any_solver(trained):
    runs = trained[3]
    own, euler, rk4 = (runs[k].check() for k in ("validate-own", "validate-euler", "validate-rk4x2"))
    # each ran the solver asked for: euler one evaluation a solve, rk4 four a step
    assert (nfe(euler, "enc"), nfe(euler, "dec")) == (1, 1)
    assert (nfe(rk4, "enc"), nfe(rk4, "dec")) == (8, 8)
    assert nfe(own, "enc") > 1
    assert "left out --node-first-step 1.0, which does not apply to it" in euler
    assert "left out" not in own
    for out in (own, euler, rk4):
        assert re.search(r"valid on 'valid' subset \| loss \d", out), out[-2000:]


def test_what_the_chosen_solver_needs_is_still_checked(trained):
    bad = trained[3]["validate-bad-steps"]
    assert bad.status not in (0, "not reached")
    assert "node_transformer: error: --node-steps must be >= 1, got 0" in bad.out
    assert "Traceback" not in bad.out


def test_fairseq_generate_and_interactive_with_another_solver(trained):
    runs, lines = trained[3], trained[2]
    generated = runs["generate-rk4"].check()
    assert len(re.findall(r"^H-\d+\t", generated, re.M)) == 6
    interactive = runs["interactive-midpoint"].check()
    assert len(re.findall(r"^H-\d+\t", interactive, re.M)) == len(lines.splitlines())


def test_hub_takes_the_solver_as_keyword_overrides(trained):
    import node_transformer
    data, save = trained[0], trained[1]
    hub = node_transformer.from_pretrained(save, checkpoint_file="checkpoint_last.pt",
                                           data_name_or_path=data, device="cpu",
                                           node_method="euler", node_steps=1)
    blocks = [b for b in hub.models[0].modules() if type(b).__name__ == "ODEBlock"]
    assert blocks and all((b.solver.method, b.solver.steps, b.solver.first_step) == ("euler", 1, None)
                          for b in blocks)
    assert isinstance(hub.translate("wa0 wb0"), str)
    with pytest.raises(SystemExit, match="--node-method 'heun9' is unknown"):
        node_transformer.from_pretrained(save, checkpoint_file="checkpoint_last.pt",
                                         data_name_or_path=data, device="cpu", node_method="heun9")


def test_a_resume_with_another_solver_names_both(trained, tmp_path):
    """The parameters fit whatever the solver, so fairseq resumes silently; one line now says
    what the checkpoint was trained with and what this run solves with."""
    import shutil
    data, save = trained[0], trained[1]
    resumed = str(tmp_path / "ckpt")
    shutil.copytree(save, resumed)

    def resume(*flags, epochs):
        return cli("fairseq-train", *train_argv(data, resumed, MODEL, "--node-encoder", "--node-decoder",
                                                *flags, lr=5e-3, max_tokens=400, epochs=epochs), env=ENV)

    proc = resume("--node-method", "rk4", "--node-steps", "2", epochs=2)
    log = proc.stdout + proc.stderr
    assert re.search(r"resuming from \S+checkpoint_last\.pt, trained with --node-method dopri5, "
                     r"--node-steps None, --node-first-step 1\.0; this run solves with --node-method "
                     r"rk4, --node-steps 2, --node-first-step None", log), log[-3000:]
    proc = resume("--node-method", "rk4", "--node-steps", "2", epochs=3)
    log = proc.stdout + proc.stderr
    assert "Loaded checkpoint" in log and "resuming from" not in log  # the same solver: no line
