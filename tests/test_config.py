"""NodeConfig: the dataclass is the flags (names, types, defaults), and older checkpoints'
args, which lack newer settings, still build."""

import argparse
from dataclasses import fields

import pytest
from fairseq import options

from fairseq_helpers import TINY, USER_DIR, write_dicts
from experiments import models
from node_transformer.config import NodeArgumentError, NodeConfig, flag
from node_transformer.model import NODETransformerModel
from odeint_ext import SolverSettings

NODE_FIELDS = [f for f in fields(NodeConfig) if not f.name.startswith("_")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dicts(str(tmp_path_factory.mktemp("dicts")))


def parse(data_dir, *flags):
    argv = [data_dir, "--user-dir", USER_DIR, "--task", "node_translation",
            "--arch", "node_transformer", *flags]
    return options.parse_args_and_arch(options.get_training_parser(), argv)


def test_every_field_is_a_flag_of_the_model_with_the_dataclass_default(data_dir):
    parser = argparse.ArgumentParser()
    group = parser.add_argument_group("Model-specific configuration", argument_default=argparse.SUPPRESS)
    NODETransformerModel.add_args(group)
    actions = {a.dest: a for a in parser._actions}
    for f in NODE_FIELDS:
        action = actions[f.name]
        assert action.option_strings == [flag(f.name)]
        assert action.help == f.metadata["help"]
        assert action.default is argparse.SUPPRESS  # defaults come from the architecture
        if f.type is bool:
            assert isinstance(action, argparse._StoreTrueAction), f.name
    assert parser.parse_args([]) == argparse.Namespace()
    # fairseq's own parser, no --node-* flag given: every setting has the dataclass default.
    args = parse(data_dir)
    assert {f.name: getattr(args, f.name) for f in NODE_FIELDS} == {f.name: f.default for f in NODE_FIELDS}


def test_flags_parse_to_their_types(data_dir):
    args = parse(data_dir, "--node-encoder", "--node-method", "rk4", "--node-steps", "4",
                 "--node-max-nfe", "0", "--node-ts", "0 0.5 1", "--node-kinetic-energy", "0.5")
    node = NodeConfig.from_namespace(args).validate()
    assert node.node_encoder is True and node.node_decoder is False
    assert node.node_steps == 4 and isinstance(node.node_steps, int)
    assert node.node_ts == "0 0.5 1"  # a string, read by parse_ts
    assert node.solver_settings() == SolverSettings(method="rk4", steps=4, max_nfe=None,
                                                    ts=(0.0, 0.5, 1.0))
    assert node.regularisation().coefficients == {"kinetic": 0.5, "jacobian": 0.0, "error": 0.0}
    args = parse(data_dir, "--node-encoder", "--node-first-step", "0.25", "--node-max-num-steps", "7")
    node = NodeConfig.from_namespace(args).validate()
    assert (node.node_first_step, node.node_max_num_steps) == (0.25, 7)
    assert isinstance(node.node_first_step, float)


def test_solver_errors_name_the_flag():
    with pytest.raises(NodeArgumentError, match="^--node-steps applies to fixed-grid methods; "
                                                "--node-method dopri5 chooses its own steps$"):
        NodeConfig(node_encoder=True, node_steps=4).solver_settings()


def test_old_checkpoint_args_without_newer_settings_build(data_dir):
    """An older run's args lack settings added since: they get the defaults."""
    args = parse(data_dir, *TINY, "--node-decoder", "--node-method", "rk4", "--node-steps", "2")
    newer = ("node_steer_b", "node_kinetic_energy", "node_jacobian_norm", "node_on_budget",
             "node_fallback_steps", "node_decoding", "node_dynamics", "node_output_init",
             "node_first_step", "node_min_step", "node_adjoint_seminorm")
    for name in newer:
        delattr(args, name)
    task, _, _ = models.build_model(data_dir, *TINY)
    model = task.build_model(args)
    node = model.node_config
    assert (node.node_decoder, node.node_method, node.node_steps) == (True, "rk4", 2)
    defaults = NodeConfig()
    assert all(getattr(node, name) == getattr(defaults, name) for name in newer)
    assert model.decoder.decoding == "auto" and model.decoder.cached_decoding()
    assert not hasattr(args, "_node_config")  # the build leaves only plain values in the args
    # ... and no copy of the settings in fairseq's configs of the model and its halves
    for holder in (model, model.encoder, model.decoder):
        assert not hasattr(holder.cfg, "_node_config"), type(holder).__name__
    assert not hasattr(model.args, "_node_config")


def test_node_settings_behind_a_wrapper(data_dir):
    """The task reads the settings through fairseq's wrappers; a wrapper that hides them
    is an error, not a silent switch to the defaults."""
    import torch.nn as nn
    from fairseq.distributed import ModuleProxyWrapper
    from node_transformer.task import node_settings

    task, model, _ = models.build_model(data_dir, *TINY, "--node-decoder", "--node-max-nfe", "77")
    assert node_settings(model).node_max_nfe == 77

    class Wrapper(nn.Module):  # forwards nothing, as DDP without fairseq's proxy
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert node_settings(ModuleProxyWrapper(Wrapper(model))).node_max_nfe == 77
    with pytest.raises(TypeError, match="holds ODE blocks but no node_config"):
        node_settings(Wrapper(model))
    _, classic, _ = models.build_model(data_dir, *TINY)  # no ODE blocks: the defaults
    assert node_settings(Wrapper(classic)) == NodeConfig()
