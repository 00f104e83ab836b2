"""Timing and peak-memory helpers shared by the benchmarks (CPU and CUDA).

CPU torch has no peak-allocation counter, so peak memory is the growth of the process's resident set
(VmHWM after resetting it through /proc/self/clear_refs) while the measured function runs. Each memory
measurement runs in a fresh child process so that memory freed by an earlier case cannot be reused
by a later one and hide its cost. On CUDA the allocator's own peak counter is exact, in this process.
"""
from __future__ import annotations

import gc
import json
import subprocess
import sys
import time


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_interleaved(fns: dict, repeats: int = 5, warmup: int = 1, device: str = "cpu") -> dict:
    """Median wall-clock seconds of each ``fns[name]()``, running the cases round-robin so that any
    background load on the machine falls on all of them alike (on CUDA: synchronised before and after)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def time_paired(a, b, repeats: int = 15, warmup: int = 1, device: str = "cpu") -> dict:
    """Two cases timed in pairs, alternating which runs first: median seconds of each, and the median and quartiles
    of the per-pair ratio ``b / a`` (drift in the machine's load cancels within a pair, so the ratio is steadier
    than the ratio of the medians)."""
    for fn in (a, b):
        for _ in range(warmup):
            fn()
    times = {"a": [], "b": []}
    for i in range(repeats):
        for name in (("a", "b") if i % 2 == 0 else ("b", "a")):
            _sync(device)
            start = time.perf_counter()
            (a if name == "a" else b)()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    ratios = sorted(tb / ta for ta, tb in zip(times["a"], times["b"]))
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"a": median(times["a"]), "b": median(times["b"]), "ratio": median(ratios),
            "q1": ratios[len(ratios) // 4], "q3": ratios[(3 * len(ratios)) // 4]}


def peak_cuda_mib(fn) -> float:
    """MiB by which CUDA allocations peak above what was allocated before ``fn()`` (exact, in this process)."""
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def device_arguments(description: str):
    """An ``ArgumentParser`` with the options every CPU/GPU benchmark takes: ``--device``, ``--json`` and the internal
    ``--memory CASE`` (measure one case in this child process)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", help="also write the table as JSON here")
    parser.add_argument("--memory", help=argparse.SUPPRESS)
    return parser


def machine(device: str) -> str:
    """One line naming what the numbers were measured on."""
    import platform

    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def peak_rss_growth_mib(fn) -> float:
    """MiB by which the resident set grows at its peak while ``fn()`` runs (call in a fresh process)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def in_child(script: str, *args: str) -> dict:
    """Run ``python script *args`` and parse the JSON object it prints on its last line."""
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_peak_in_children(script: str, cases: dict[str, list[str]], repeats: int = 5) -> dict[str, float]:
    """Median over ``repeats`` fresh child processes of each case's peak ``mib`` (``python script *cases[name]``).
    One child's resident-set growth varies by +-20% here (the allocator keeps or returns memory differently from
    run to run), so the cases alternate and the median is reported."""
    values = {name: [] for name in cases}
    for _ in range(repeats):
        for name, args in cases.items():
            values[name].append(in_child(script, *args)["mib"])
    return {name: sorted(v)[len(v) // 2] for name, v in values.items()}


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print(line(r))
