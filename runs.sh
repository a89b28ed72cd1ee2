#!/usr/bin/env bash
# Every configuration of both studies, then the figures and tables: sweep.py runs them, and its
# docstring lists the settings (environment variables). For example:
#
#   bash runs.sh                    # the whole study, then logs/report/
#   QUICK=1 bash runs.sh            # every configuration for two batches: the pipeline checked
#   DRY_RUN=1 bash runs.sh          # the commands and the plan, running nothing
#   RUN_GROUPS=reference SEEDS="1 2 3" GPUS="0 1" bash runs.sh
cd "$(dirname "$0")" || exit 2
exec "${PYTHON:-python3}" sweep.py "$@"
