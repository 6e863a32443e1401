#!/usr/bin/env bash
# Conclusions 0-2 (and 3-4 on NFE): the full NODE-Transformer at tol 1e-3 learns (loss ~4.5),
# stays above the 1-layer Transformer, and trains much slower (35 h against 1.5 h).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study_experiment 03-node-full-tol1e-3 --compare 02-transformer-1layer "$@"
