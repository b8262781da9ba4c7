"""After a red run: the few lines that say why, printed last so they are in CI's short tail.

The machine (CPU features, memory, disks) and, for each stack log the tests left, the first
lines that name an error, minus the shutdown noise that follows any failure.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

ERROR = re.compile(r"Error|Exception|error:|Killed|Traceback|failed|Fatal|Illegal")
NOISE = re.compile(r"EngineDeadError|output_handler|leaked|warnings\.warn|Warning:|"
                   r"async_llm\.py|resource_tracker|Found ulimit")


def machine() -> str:
    flags = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = ",".join(x for x in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                                 if x in have)
                break
    mem = Path("/proc/meminfo").read_text().split("\n")[2].split()[1]
    disks = " ".join(f"{p}:{shutil.disk_usage(p).free // 2**20}M"
                     for p in ("/tmp", "/dev/shm", ".") if os.path.exists(p))
    nodes = len(glob.glob("/sys/devices/system/node/node*"))
    return (f"cpus={os.cpu_count()} affinity={len(os.sched_getaffinity(0))} flags={flags} "
            f"mem_avail={int(mem) // 1024}M numa_nodes={nodes} free {disks}")


def main() -> None:
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
