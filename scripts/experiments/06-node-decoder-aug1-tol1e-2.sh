#!/usr/bin/env bash
# Baseline of conclusion 7: the decoder-only NODE (augmented by 1, tol 1e-2, stopped by the
# study after 4 h) that the separated NODE decoder (07) should match at a lower cost.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study_experiment 06-node-decoder-aug1-tol1e-2 --compare 07-separated-aug1-tol1e-2 "$@"
