"""Where, when and how a benchmark ran: the fields every tool's JSON report starts with.

Standard library only, so that tools/gpu_bench.py, which must run on a bare GPU image, can use it too.
"""
from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path


def machine() -> dict:
    """The machine: platform, CPU model (from /proc/cpuinfo where there is one), CPU count, Python version."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model_lines = [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if model_lines:
            cpu = model_lines[0].split(":", 1)[1].strip()
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def provenance() -> dict:
    """The command line as typed, the UTC time now, and the machine."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }
