"""A checkpoint written by an older version of the code loads and translates as it did.

tests/data/old-checkpoint-ad52c09/ holds a tiny NODE-Transformer (NODE encoder and decoder,
rk4 on 2 steps) trained and saved by commit ad52c09, the last with node_transformer/options.py
(before the --node-* settings became NodeConfig), with its dictionaries, test split and that
code's own fairseq-generate output (made by tests/data/make_old_checkpoint.sh). Its config is
the argparse Namespace of options.py (e.g. node_ts stored as the string "[0.0, 1.0]"); today's
code must read it and give the same translations, through fairseq-generate and the hub.
"""

import os
import re

import pytest

from fairseq_helpers import ROOT, USER_DIR, cli

OLD = os.path.join(ROOT, "tests", "data", "old-checkpoint-ad52c09")
ENV = {"OMP_NUM_THREADS": "1"}


def old_hypotheses():
    """{sentence id: (tokens, score)} as the old code's fairseq-generate printed them."""
    out = {}
    with open(os.path.join(OLD, "generate.old.txt"), encoding="utf-8") as f:
        for line in f:
            sid, score, tokens = line.rstrip("\n").split("\t")
            out[int(sid[2:])] = (tokens, float(score))
    return out


def test_old_checkpoint_translates_as_before_through_fairseq_generate():
    proc = cli("fairseq-generate", OLD, "--user-dir", USER_DIR, "--task", "node_translation",
               "--path", os.path.join(OLD, "model.pt"), "--gen-subset", "test", "--beam", "2",
               "--batch-size", "4", "--max-len-b", "6", env=ENV)
    now = {int(m.group(1)): (m.group(3), float(m.group(2)))
           for m in re.finditer(r"^H-(\d+)\t(\S+)\t(.*)$", proc.stdout, re.M)}
    old = old_hypotheses()
    assert len(old) == 6 and now.keys() == old.keys()
    for sid, (tokens, score) in old.items():
        assert now[sid][0] == tokens, sid
        assert now[sid][1] == pytest.approx(score, abs=1e-5), sid
    assert "NODE decoder (rk4, 2 steps): each generation step solves the newest position only (cached)" \
        in proc.stderr


def test_old_checkpoint_translates_as_before_through_the_hub():
    import node_transformer

    hub = node_transformer.from_pretrained(OLD, device="cpu")
    node = hub.models[0].node_config
    assert (node.node_encoder, node.node_decoder, node.node_method, node.node_steps) == (True, True, "rk4", 2)
    assert hub.models[0].encoder.layers[0].block.solver.ts == (0.0, 1.0)  # from the string
    assert hub.models[0].decoder.cached_decoding()
    with open(os.path.join(OLD, "test.raw.src"), encoding="utf-8") as f:
        sources = f.read().splitlines()
    old = old_hypotheses()
    ids = sorted(old)
    got = hub.translate([sources[i] for i in ids], beam=2, max_len_b=6)
    assert got == [old[i][0] for i in ids]
