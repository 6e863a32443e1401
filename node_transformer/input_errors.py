"""Bad input a user can fix, said in one line.

fairseq's tools end every error in a traceback. The plugin raises these exceptions where it
finds the problem (a checkpoint torch cannot read, an old format), so that Python callers (the
hub) catch them as usual; ``fairseq_fixes`` turns them into one line and a non-zero status in
the command-line tools that load checkpoints (``stop_with_one_line``).
"""

from typing import Mapping, Optional

PREFIX = "node_transformer: error: "


class NodeInputError(Exception):
    """A problem with the user's input (a file, a flag), named in the message."""


class UnreadableCheckpoint(NodeInputError, OSError):
    """torch cannot read the file: truncated, partly written, or not a checkpoint."""


class OldCheckpointFormat(NodeInputError, ValueError):
    """A checkpoint of an older version that this version cannot build."""


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def find(error: Optional[BaseException]) -> Optional[NodeInputError]:
    """The NodeInputError behind ``error``: fairseq wraps some, e.g. the trainer's "Cannot load
    model parameters" exception keeps the model's error as its context."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, NodeInputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def stop_with_one_line(error: BaseException, path: str, doing: str) -> SystemExit:
    """The command-line form: ``node_transformer: error: DOING PATH: what is wrong``."""
    found = find(error)
    text = str(found) if found is not None else first_line(error)
    where = "" if path in text else f"{doing} {path}: "
    return SystemExit(f"{PREFIX}{where}{text}")


def _modules(keys, others, shown: int = 3) -> str:
    """Where ``keys`` differ from ``others``: each key cut to its first component path that no
    key of ``others`` has (``encoder.layers.0.block.gate``), a few of them and the count."""
    taken = {".".join(k.split(".")[:i]) for k in others for i in range(1, k.count(".") + 2)}
    names = []
    for key in keys:
        parts = key.split(".")
        cut = next((i for i in range(1, len(parts) + 1) if ".".join(parts[:i]) not in taken), len(parts))
        names.append(".".join(parts[:cut]))
    names = list(dict.fromkeys(names))
    more = ", ..." if len(names) > shown else ""
    return f"{len(keys)}: " + ", ".join(names[:shown]) + more


def describe_mismatch(expected: Mapping, found: Mapping) -> Optional[str]:
    """What differs between a model's parameters (``expected``) and a checkpoint's (``found``),
    in one line; None when nothing does."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    resized = [k for k in expected if k in found and hasattr(found[k], "shape")
               and tuple(found[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"it lacks parameters of this model ({_modules(missing, found)})")
    if unexpected:
        parts.append(f"it holds parameters this model does not have ({_modules(unexpected, expected)})")
    if resized:
        k = resized[0]
        parts.append(f"{len(resized)} parameters differ in shape ({k}: {tuple(found[k].shape)} in "
                     f"the checkpoint, {tuple(expected[k].shape)} here)")
    if not parts:
        return None
    return ("the checkpoint does not fit this model, built from other --arch, --node-* or size "
            "flags than the run that wrote it: " + "; ".join(parts)
            + ". Use the flags that wrote it (to resume), or another --save-dir")
