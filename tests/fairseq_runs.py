"""Run several fairseq commands one after another in ONE fresh Python process.

Each command is the console script's own entry function (``fairseq-generate`` is
``fairseq_cli.generate:cli_main``) called with the command's argv, as the shell would call it;
what the process saves is torch's and fairseq's start-up (about 5 s a command on a 2-core CPU),
which made a test file of ~100 commands too slow for the suite. The plugin is imported the
way a user's run imports it, by the first command's ``--user-dir``.

A command's stdout, stderr and log lines go to ``NAME.log``; a command that raises or exits
non-zero is recorded and the next still runs (unless it ``needs`` a failed one).
``results.json`` (rewritten after every command) holds each one's status, wall and CPU seconds.

    python tests/fairseq_runs.py PLAN.json   # PLAN: [{"name", "tool", "argv", "needs"?}]
"""

import contextlib
import importlib
import json
import logging
import os
import sys
import time
import traceback

ENTRY = {"fairseq-preprocess": "fairseq_cli.preprocess", "fairseq-train": "fairseq_cli.train",
         "fairseq-generate": "fairseq_cli.generate", "fairseq-interactive": "fairseq_cli.interactive",
         "fairseq-validate": "fairseq_cli.validate"}


def run_one(tool, argv, log):
    """Exit status of ``tool argv`` (0, the SystemExit code, or 1 on an exception)."""
    main = importlib.import_module(ENTRY[tool]).cli_main
    sys.argv = [tool, *argv]
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            main()
            return 0
        except SystemExit as e:
            if e.code not in (None, 0) and not isinstance(e.code, int):
                print(e.code, file=log)  # SystemExit("message") prints it, as the shell does
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # noqa: BLE001  (recorded, like a crashed command's exit status)
            traceback.print_exc(file=log)
            return 1


def main(plan_path):
    out = os.path.dirname(os.path.abspath(plan_path))
    with open(plan_path) as f:
        plan = json.load(f)
    # One root handler whose stream follows the command: fairseq's own basicConfig calls
    # (at import, and inside generate) then add none that would outlive a command's file.
    handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    logging.root.addHandler(handler)
    logging.root.setLevel(logging.INFO)
    results = {}
    for step in plan:
        name, needs = step["name"], step.get("needs")
        with open(os.path.join(out, name + ".log"), "w") as log:
            if needs and results.get(needs, {}).get("status") != 0:
                print(f"not run: {needs} failed", file=log)
                results[name] = {"status": "not run", "seconds": 0.0}
            else:
                handler.setStream(log)
                start, cpu = time.perf_counter(), time.process_time()
                status = run_one(step["tool"], step["argv"], log)
                handler.setStream(sys.__stderr__)
                results[name] = {"status": status, "seconds": round(time.perf_counter() - start, 2),
                                 "cpu_seconds": round(time.process_time() - cpu, 2)}
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
