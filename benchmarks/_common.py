# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Helpers shared by the benchmark scripts: machine description, timing statistics, memory probes, JSON output."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

GIB = 1024**3
MIB = 1024**2


# argparse `type=` functions: a bad value is argparse's one-line error, not a traceback halfway through a benchmark.
def _int_at_least(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def positive_int_list(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. "1,2,4,8"."""
    return [positive_int(part) for part in text.split(",")]


def nonnegative_int_list(text: str) -> list[int]:
    """Comma-separated integers >= 0, e.g. block indices "0,3"."""
    return [nonnegative_int(part) for part in text.split(",")]


def device_name(text: str) -> str:
    """A torch device this machine has ("cpu", "cuda", "cuda:1", ...)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no MPS device")
    return text


def cpu_model() -> str:
    """The `model name` line of /proc/cpuinfo (what the kernel reports, possibly generic under virtualisation)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """What the numbers were measured on."""
    import psutil

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device is not None and torch.device(device).type == "cuda":
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / GIB, 1)
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(samples: Iterable[float], digits: int = 5) -> dict[str, Any]:
    """Median, range and relative spread ((max - min) / median) of repeated measurements."""
    values = sorted(float(v) for v in samples)
    median = statistics.median(values)
    return {
        "median": round(median, digits),
        "min": round(values[0], digits),
        "max": round(values[-1], digits),
        "spread": round((values[-1] - values[0]) / median, 3) if median > 0 else None,
        "n": len(values),
    }


def emit(result: dict[str, Any]) -> None:
    """Print the result as ONE JSON object on the last line of stdout."""
    print(json.dumps(result, separators=(",", ":")), flush=True)


def random_photo(height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    """A deterministic smooth colour field with some texture (the content does not change the cost)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(3 * x + 1), np.cos(4 * y), np.sin(2 * (x + y))], axis=-1) * 0.35 + 0.5
    base += rng.normal(0, 0.05, base.shape)
    return PIL.Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8), mode="RGB")


class PeakRSSSampler:
    """Samples this process's resident set size in a background thread; `peak` is the largest value seen.

    Used as a context manager around the code to measure. `ru_maxrss` alone cannot be reset, so this is what lets one
    process report the peak of one phase."""

    def __init__(self, interval_s: float = 0.002):
        import psutil

        self._process = psutil.Process()
        self.interval_s = interval_s
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSSSampler:
        self.start = self.peak = self._process.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def ru_maxrss_bytes() -> int:
    """Peak RSS of this process so far (Linux reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class LiveTensorBytes(TorchDispatchMode):
    """Bytes held by live tensor storages, counted at the dispatcher: the allocator-free analogue of
    `torch.cuda.memory_allocated` (no caching, no rounding, no workspaces), for any device — including fake tensors,
    so that a full-size step can be traced without allocating it.

    Every storage produced by an op is counted once, from its creation until its last reference dies (views share
    their base's storage). Tensors that exist before the mode is entered (weights) are added with `track`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self.label = ""  # set by the measured code (`mark`); `peak_label` is the label current at the peak
        self.peak_label = ""
        self.label_peaks: dict[str, int] = {}  # the highest `current` seen while each label was set
        self.ops: set[str] = set()
        self._refs: dict[int, weakref.ref] = {}

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._refs:
            return
        nbytes = storage.nbytes()
        self.current += nbytes
        if self.current > self.peak:
            self.peak, self.peak_label = self.current, self.label
        if self.current > self.label_peaks.get(self.label, 0):
            self.label_peaks[self.label] = self.current

        def release(_ref: weakref.ref, key: int = key, nbytes: int = nbytes) -> None:
            self.current -= nbytes
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(storage, release)

    def reset_peak(self) -> None:
        self.peak, self.peak_label = self.current, self.label
        self.label_peaks = {self.label: self.current}

    def mark(self, label: str) -> None:
        self.label = label
        self.label_peaks[label] = max(self.label_peaks.get(label, 0), self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func.overloadpacket.__name__))
        tree_map_only(torch.Tensor, self.track, out)
        return out
