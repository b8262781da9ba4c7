#!/usr/bin/env bash
# Make one venv per third-party benchmark tool, beside (not in) the project's venv: guidellm and
# aiperf pin their own versions of libraries vLLM also pins, so they would fight in one venv.
#
#   scripts/bench_tool_venvs.sh            # both, under .cache/bench-venvs/{guidellm,aiperf}
#   scripts/bench_tool_venvs.sh guidellm   # one
#
# Each tool is then run as .cache/bench-venvs/NAME/bin/NAME (see docs/benchmarks.md).
# Both pull in torch; they get the project's own (CPU) torch build rather than PyPI's default
# CUDA one, which is 6 GB instead of 1.5.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=.cache/bench-venvs
PYTHON=${PYTHON:-python3}
TORCH=$(.venv/bin/python -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
declare -A PINS=([guidellm]="guidellm==0.8.1" [aiperf]="aiperf==0.13.0")
for tool in "${@:-guidellm aiperf}"; do
  for name in $tool; do
    spec=${PINS[$name]:?"unknown tool $name (guidellm or aiperf)"}
    if [ ! -x "$ROOT/$name/bin/python" ]; then
      "$PYTHON" -m venv "$ROOT/$name"
    fi
    "$ROOT/$name/bin/pip" install --quiet --upgrade pip
    "$ROOT/$name/bin/pip" install --quiet "$spec" ${TORCH:+"torch==$TORCH"}
    echo "$name: $("$ROOT/$name/bin/pip" show "${spec%%==*}" | grep ^Version)"
  done
done
