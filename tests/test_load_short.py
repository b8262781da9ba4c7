"""`scripts/load.py --short`: a mixed load through its own stack, then the usage ledger checked
against what the clients saw (nothing lost, nothing counted twice)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ("chat 200 requests", "chat 200 prompt_tokens", "chat 200 completion_tokens",
          "chat 499 requests (dropped streams)", "chat 499 prompt_tokens",
          "image 200 requests", "image 200 images", "transcription 200 requests",
          "transcription 200 audio_seconds", "all requests")


@pytest.mark.timeout(900)
def test_short_load_is_metered_exactly():
    proc = subprocess.run([sys.executable, "scripts/load.py", "--short"], cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                          text=True, timeout=840)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-4000:]
    for name in CHECKS:
        line = next((x for x in out.splitlines() if x.startswith(name + " ")), None)
        assert line is not None, f"no {name!r} check in:\n{out}"
        assert line.rstrip().endswith(" OK"), line
    assert "MISMATCH" not in out
    assert re.search(r"ledger: (\d+)/\1 checks OK; unexpected errors: 0", out), out
