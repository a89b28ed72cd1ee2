#!/usr/bin/env bash
# Every configuration of both studies, then the figures and tables: sweep.py runs them. Its
# settings are environment variables (docs/recipes.md). For example:
#
#   bash runs.sh                    # the whole study, then logs/report/
#   QUICK=1 bash runs.sh            # every configuration for two batches: the pipeline checked
#   DRY_RUN=1 bash runs.sh          # the commands and the plan, running nothing
#   RUN_GROUPS=reference SEEDS="1 2 3" GPUS="0 1" bash runs.sh
# Relative paths in the settings (LOG_DIR, LM_DATA, ...) are of the folder it is started from.
py=${PYTHON:-python3}
command -v "$py" >/dev/null || { echo "error: PYTHON=$py is not a command here" >&2; exit 2; }
"$py" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" 2>/dev/null \
  || { echo "error: $py has no torch: activate the environment of requirements.txt, or set PYTHON" >&2; exit 2; }
exec "$py" "$(dirname "$0")/sweep.py" "$@"
