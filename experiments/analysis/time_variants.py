#!/usr/bin/env python3
"""Time training steps of each model variant on random batches: tokens/s, NFE, peak memory.

    python scripts/time_variants.py --device cuda --seconds 10      (scripts/gpu-check.sh)
    python scripts/time_variants.py --device cpu --seconds 2 --tiny  (smoke test)

Prints one row per variant and writes them as JSON with --json FILE. Speeds are comparable
only within one run (same machine, same batch).
"""

import argparse
import json
import platform
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from experiments.models import SIZES, build_model, write_dicts
from node_transformer.task import collect_nfe, reset_nfe

VARIANTS = {
    "transformer-1layer": ["--encoder-layers", "1", "--decoder-layers", "1"],
    "node-full": ["--node-encoder", "--node-decoder"],
    "node-decoder-aug1": ["--node-decoder", "--encoder-layers", "1", "--node-augment-dims", "1"],
    "node-separated-aug1": ["--node-decoder", "--node-separated-decoder", "--encoder-layers", "1",
                            "--node-augment-dims", "1"],
    "node-separated-aug1-time": ["--node-decoder", "--node-separated-decoder", "--encoder-layers",
                                 "1", "--node-augment-dims", "1", "--node-time-dependent"],
}


def build(variant, sizes, data_dir, tol):
    return build_model(data_dir, "--share-all-embeddings", "--dropout", "0.1", "--node-rtol",
                       str(tol), "--node-atol", str(tol), *sizes, *VARIANTS[variant])[1]


def time_variant(model, device, batch, src_len, tgt_len, vocab, seconds):
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, vocab, (batch, src_len), generator=g).to(device)
    tgt = torch.randint(4, vocab, (batch, tgt_len), generator=g).to(device)
    prev = torch.cat([torch.full_like(tgt[:, :1], 2), tgt[:, :-1]], dim=1)
    lengths = torch.full((batch,), src_len, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps, nfe, start = 0, {}, time.perf_counter()
    while True:
        reset_nfe(model)
        out, _ = model(src, lengths, prev)
        loss = F.cross_entropy(out.view(-1, out.size(-1)), tgt.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        for k, v in collect_nfe(model, backward=True).items():
            nfe[k] = nfe.get(k, 0) + v
        steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    row = {"steps": steps, "seconds": round(elapsed, 2),
           "tokens_per_second": round(steps * batch * (src_len + tgt_len) / elapsed, 1)}
    row.update({k: round(v / steps, 1) for k, v in sorted(nfe.items())})
    if device.type == "cuda":
        row["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seconds", type=float, default=10.0, help="per variant (default 10)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--src-len", type=int, default=16)
    p.add_argument("--tgt-len", type=int, default=16)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--tol", type=float, default=0.01)
    p.add_argument("--tiny", action="store_true", help="tiny dimensions (smoke test)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as data_dir:
        write_dicts(data_dir, (f"t{i}" for i in range(a.vocab - 4)))
        rows = []
        for variant in a.variants:
            torch.manual_seed(0)
            model = build(variant, SIZES["tiny" if a.tiny else "base"], data_dir, a.tol)
            row = {"variant": variant, **time_variant(model, device, a.batch, a.src_len,
                                                      a.tgt_len, a.vocab, a.seconds)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "argv": sys.argv[1:]}
    print(json.dumps(meta))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
