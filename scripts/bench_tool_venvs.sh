#!/usr/bin/env bash
# Make one venv per third-party tool, beside (not in) the project's venv: guidellm, aiperf and
# LiteLLM pin their own versions of libraries vLLM also pins, so they would fight in one venv.
#
#   scripts/bench_tool_venvs.sh            # the benchmarks, under .cache/bench-venvs/{guidellm,aiperf}
#   scripts/bench_tool_venvs.sh guidellm   # one
#   scripts/bench_tool_venvs.sh litellm    # LiteLLM's proxy, for tests/test_e2e_litellm.py
#
# Each tool is then run as .cache/bench-venvs/NAME/bin/NAME (see docs/benchmarks.md). A tool
# whose venv holds its pins already is skipped; a changed pin reinstalls it.
# guidellm and aiperf pull in torch; they get the project's own (CPU) torch build rather than
# PyPI's default CUDA one, which is 6 GB instead of 1.5. LiteLLM's proxy needs no torch.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=.cache/bench-venvs
PYTHON=${PYTHON:-python3}
TORCH=$(.venv/bin/python -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
declare -A PINS=([guidellm]="guidellm==0.8.1" [aiperf]="aiperf==0.13.0"
                [litellm]="litellm[proxy]==1.108.7")
declare -A NEEDS_TORCH=([guidellm]=1 [aiperf]=1)
for tool in "${@:-guidellm aiperf}"; do
  for name in $tool; do
    spec=${PINS[$name]:?"unknown tool $name (guidellm, aiperf or litellm)"}
    torch=${NEEDS_TORCH[$name]:+$TORCH}
    # A venv already made with these pins is left as it is: a second run returns at once.
    stamp="$ROOT/$name/.installed"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$spec $torch" ]; then
      echo "$name: $spec already installed"
      continue
    fi
    if [ ! -x "$ROOT/$name/bin/python" ]; then
      "$PYTHON" -m venv "$ROOT/$name"
    fi
    "$ROOT/$name/bin/pip" install --quiet --upgrade pip
    "$ROOT/$name/bin/pip" install --quiet "$spec" ${torch:+"torch==$torch"}
    package=${spec%%==*}
    echo "$name: $("$ROOT/$name/bin/pip" show "${package%%[*}" | grep ^Version)"
    echo "$spec $torch" >"$stamp"
  done
done
