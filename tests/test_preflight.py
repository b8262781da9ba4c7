"""`serving up` on CUDA: an NVIDIA driver too old for CUDA 13, or none, stops it with words."""

from __future__ import annotations

import pytest

from serving.launcher.preflight import PreflightError, check_driver, proc_driver_version
from serving.workers.transcription.engine import preload_cublas12

PROC = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
        "(dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 06:54:38 UTC 2025\nGCC version: gcc 12.3.0\n")


def test_the_driver_version_is_read_from_proc():
    assert proc_driver_version(PROC) == "580.65.06"
    assert proc_driver_version(PROC.replace("Open Kernel Module for x86_64",
                                            "UNIX x86_64 Kernel Module")) == "580.65.06"
    assert proc_driver_version("nothing here") is None


def test_an_old_driver_or_none_fails_clearly():
    check_driver("580.65.06")
    check_driver("590.1")
    with pytest.raises(PreflightError, match=r"driver is 570\.133\.20.*580 or newer"):
        check_driver("570.133.20")
    with pytest.raises(PreflightError, match="--gpus all"):
        check_driver(None)


def test_cublas_preload_is_a_no_op_without_the_pip_package():
    preload_cublas12()  # no nvidia-cublas-cu12 on a CPU machine: nothing to load, no error
