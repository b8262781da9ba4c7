"""Checks `serving up` makes before starting anything on a CUDA node.

vLLM 0.32's wheels are built for CUDA 13 (they link `libcudart.so.13`), and a CUDA 13 runtime
needs a kernel driver of 580 or newer; with an older one the chat worker dies deep in its start
with a CUDA error that does not say "driver". Checked here first, in words an operator can act on.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

MIN_DRIVER = 580  # CUDA 13.0's minimum Linux driver
PROC_VERSION = Path("/proc/driver/nvidia/version")


class PreflightError(Exception):
    """The node cannot run this config; the message says what to do."""


def proc_driver_version(text: str) -> str | None:
    """The version in /proc/driver/nvidia/version's first line."""
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version ("580.65.06"), or None where there is none."""
    if PROC_VERSION.exists() and (
            found := proc_driver_version(PROC_VERSION.read_text(errors="replace"))):
        return found
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30, check=True).stdout.split()
        except (OSError, subprocess.SubprocessError):
            return None
        return out[0] if out else None
    return None


def check_driver(version: str | None) -> None:
    if version is None:
        raise PreflightError(
            "this config runs on CUDA but no NVIDIA driver is visible (no "
            f"{PROC_VERSION}, no nvidia-smi); in a container, start it with `--gpus all`")
    if int(version.split(".")[0]) < MIN_DRIVER:
        raise PreflightError(
            f"the NVIDIA driver is {version}, but vLLM 0.32 is built for CUDA 13, which needs "
            f"driver {MIN_DRIVER} or newer: upgrade the host's driver")
