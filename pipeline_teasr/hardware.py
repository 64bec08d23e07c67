# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""What this machine computes in hardware, where that decides a default (training precision) or a warning."""

from __future__ import annotations

import torch


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 matrix products in hardware (AVX512-BF16 or AMX).

    Without it, bfloat16 on the CPU is emulated, and slower than float32: on an AVX2-only EPYC, a teasr-mini flow
    training step took 7 s under bf16 autocast against 0.83 s in float32, and the README's 1-step upscale 17.3 s
    against 3.5 s.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
