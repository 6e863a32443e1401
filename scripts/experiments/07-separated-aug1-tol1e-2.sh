#!/usr/bin/env bash
# Conclusion 7: the separated NODE decoder "reduces drastically computations ... without
# impacting final performances" (4.38 after 4 h) against the decoder-only NODE (06).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study_experiment 07-separated-aug1-tol1e-2 --compare 06-node-decoder-aug1-tol1e-2 "$@"
