"""The machine a benchmark ran on, for its printed figures (imported by the scripts beside it)."""
import platform


def cpu_name() -> str:
    "The CPU model (from /proc/cpuinfo on Linux), else platform.processor()."
    try: return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration): return platform.processor() or platform.machine()
