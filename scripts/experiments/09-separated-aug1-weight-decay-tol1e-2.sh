#!/usr/bin/env bash
# Conclusion 10: weight decay (0.01) "reduces globally the number of ODE evaluation but
# hurts the performance". Drawn beside 07, the same model without it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study_experiment 09-separated-aug1-weight-decay-tol1e-2 --compare 07-separated-aug1-tol1e-2 "$@"
