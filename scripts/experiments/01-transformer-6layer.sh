#!/usr/bin/env bash
# Baseline of conclusions 1 and 2: the study's classic 6-layer Transformer "converges and
# reaches a lower loss (3.04)" than any NODE-Transformer. Drawn beside the 1-layer one (02).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study_experiment 01-transformer-6layer --compare 02-transformer-1layer "$@"
