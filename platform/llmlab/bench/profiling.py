"""Where a training step's time goes: torch.profiler's kernels, the most expensive first.

Benchmarks print this under `--profile N` so that a figure comes with its explanation (which
kernels dominate, how much is elementwise traffic against matrix products) from the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.autograd import DeviceType


def top_kernels(run: Callable[[], None], device: torch.device, rows: int) -> str:
    """Call `run` once under the profiler; the table of its `rows` costliest operators by self time
    on `device` (CUDA kernels on a GPU, operators on the CPU), with their share of the total."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall_ms = 1e3 * (time.perf_counter() - started)
    on_device = device.type == "cuda"
    # On a GPU only the kernels themselves: an operator's device time is its kernels' again, and
    # counting both would double the total. Their sum is the time the GPU was busy.
    events = [
        event
        for event in profiler.key_averages()
        if _self_time(event, on_device) > 0 and (not on_device or event.device_type == DeviceType.CUDA)
    ]
    events.sort(key=lambda event: _self_time(event, on_device), reverse=True)
    total_us = sum(_self_time(event, on_device) for event in events)
    lines = [f"{'self ms':>9}{'share':>7}{'calls':>7}  {'kernel' if on_device else 'operator'}"]
    for event in events[:rows]:
        self_us = _self_time(event, on_device)
        lines.append(f"{self_us / 1e3:>9.2f}{self_us / total_us:>7.1%}{event.count:>7}  {event.key[:110]}")
    busy = "the GPU busy" if on_device else "all operators"
    lines.append(
        f"{total_us / 1e3:>9.2f}{1:>7.0%}{'':>7}  total: {busy} ({len(events)} distinct), "
        f"of {wall_ms:.0f} ms wall under the profiler"
    )
    return "\n".join(lines)


def _self_time(event, on_device: bool) -> float:
    # FunctionEventAvg names the device total self_device_time_total (self_cuda_time_total before).
    if on_device:
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))
    return float(event.self_cpu_time_total)
