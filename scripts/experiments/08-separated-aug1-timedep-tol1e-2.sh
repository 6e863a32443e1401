#!/usr/bin/env bash
# Conclusion 9: "Adding time-dependency didn't improve our training performance": the same
# curve and loss as 07, its decoder NFE starting higher. Drawn beside 07.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_study_experiment 08-separated-aug1-timedep-tol1e-2 --compare 07-separated-aug1-tol1e-2 "$@"
