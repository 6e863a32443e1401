#!/usr/bin/env bash
# Conclusion 5: "No bigger GPU, no augmented full NODE-Transformer": the study could not run
# this one (augmented by 1, tol 1e-3); here it runs, beside the unaugmented 03.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study_experiment 05-node-full-aug1-tol1e-3 --compare 03-node-full-tol1e-3 "$@"
