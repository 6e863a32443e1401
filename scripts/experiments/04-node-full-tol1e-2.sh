#!/usr/bin/env bash
# Conclusions 3 and 4: at tol 1e-2 (5.98 after 4 h) the decoder's NFE grows during training
# while the encoder's stays almost constant. Drawn beside tol 1e-3 (03).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study_experiment 04-node-full-tol1e-2 --compare 03-node-full-tol1e-3 "$@"
