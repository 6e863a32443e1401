# Sourced by scripts/experiments/*.sh. Finds the project's Python (PYTHON, else the
# repository's .venv, else python3) and hands over to scripts/run_study_experiment.py,
# which does every step; this file holds no logic of its own.
STUDY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$STUDY_ROOT/.venv/bin/python" ]]; then PYTHON="$STUDY_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$STUDY_ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's packages, installed or not

run_study_experiment() {
  RUN_STUDY_PROG="$0" exec "$PYTHON" "$STUDY_ROOT/scripts/run_study_experiment.py" "$@"
}
