"""After a red run: the few lines that say why, printed last so they are in CI's short tail.

The machine (CPU features, memory, disks) and, for each stack log the tests left, the first
lines that name an error, minus the shutdown noise that follows any failure.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ERROR = re.compile(r"Error|Exception|error:|Killed|Traceback|failed|Fatal|Illegal")
NOISE = re.compile(r"EngineDeadError|output_handler|leaked|warnings\.warn|Warning:|"
                   r"async_llm\.py|resource_tracker|Found ulimit")


def _hardware():
    """serving.config.hardware, loaded by path: it is stdlib only, and this runs outside the
    project's venv (which may not even exist when the install failed)."""
    spec = importlib.util.spec_from_file_location(
        "hardware", Path(__file__).resolve().parent.parent / "serving/config/hardware.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def machine() -> str:
    """CPU flags and the dtype `auto` picks on this CPU, memory, NUMA nodes, free disk."""
    mem = Path("/proc/meminfo").read_text().split("\n")[2].split()[1]
    disks = " ".join(f"{p}:{shutil.disk_usage(p).free // 2**20}M"
                     for p in ("/tmp", "/dev/shm", ".") if os.path.exists(p))
    nodes = len(glob.glob("/sys/devices/system/node/node*"))
    return (f"cpus={os.cpu_count()} affinity={len(os.sched_getaffinity(0))} "
            f"{_hardware().describe_cpu()} mem_avail={int(mem) // 1024}M numa_nodes={nodes} "
            f"free {disks}")


def main() -> None:
    if sys.argv[1:] == ["--machine"]:  # the first line of every CI run
        print(f"=== machine: {machine()}")
        return
    print("=== digest ===")
    print(machine())
    found = glob.glob("/tmp/pytest-of-*/pytest-current/**/stack.log", recursive=True)
    logs = sorted({os.path.realpath(p) for p in found}, key=os.path.getmtime)
    shown = 0
    for path in logs:
        with open(path, errors="replace") as f:
            lines = [ln.rstrip() for ln in f if ERROR.search(ln) and not NOISE.search(ln)]
        if not lines or shown >= 2:
            continue
        shown += 1
        print(f"--- {path.split('/pytest-')[-1]}")
        seen: set[str] = set()
        for line in lines:
            key = re.sub(r"\d+", "#", line)[-120:]
            if key not in seen and len(seen) < 10:
                seen.add(key)
                print(line[:220])
    if shown == 0:
        print(subprocess.run(["df", "-h"], capture_output=True, text=True).stdout[-600:])


if __name__ == "__main__":
    main()
