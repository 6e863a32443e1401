#!/usr/bin/env bash
# Conclusion 1: "As is, NODE transformer isn't able to reach the performance of a normal
# transformer with 1 single layer" (3.194 in 1.5 h), and the time baseline of conclusion 2.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study_experiment 02-transformer-1layer --compare 01-transformer-6layer 03-node-full-tol1e-3 07-separated-aug1-tol1e-2 "$@"
