#!/usr/bin/env bash
# Every claim that configs/ covers (the study's conclusions 0-10, docs/RESULTS.md): the nine
# experiments in order (a failed one does not stop the others), then their figures and table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study_experiment all "$@"
