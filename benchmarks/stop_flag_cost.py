"""The per-step cost of the control all-reduce of ``datvit train`` under torchrun (stop on a signal, skip a
non-finite loss: ``datvit.train.distributed.max_over_ranks``) against a DDP training step of the tiny test model,
measured interleaved in the same processes (with and without the all-reduce, alternating):

    torchrun --nproc_per_node 2 -m benchmarks.stop_flag_cost     (from the checkout root)

2026-11-28, 2-core machine shared with other jobs, gloo, 1 thread per rank, two runs: all-reduce 0.18-0.20 ms
(median of 200), 0.3% of the step; step 63.7 / 60.5 ms without, 61.9 / 62.2 ms with (ratios 0.97 and 1.03: noise).
Real models' steps are longer, so the share is smaller still.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

import datvit.train.distributed as dist_utils
from datvit.models import DAT

TINY = dict(img_size=32, dim_stem=16, dims=[16, 32, 64, 128], depths=[1, 1, 2, 1], heads=[1, 2, 4, 8],
            groups=[-1, -1, 1, 2], window_sizes=[4, 4, 4, 4], stage_spec=[["L"], ["L"], ["L", "D"], ["D"]])


def main() -> None:
    torch.set_num_threads(1)
    info = dist_utils.init_distributed("cpu")
    model = torch.nn.parallel.DistributedDataParallel(DAT(num_classes=3, **TINY))
    optimizer = torch.optim.AdamW(model.parameters())
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))

    def step(with_flag: bool) -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if with_flag:
            dist_utils.max_over_ranks([not bool(torch.isfinite(loss).all()), 0], info)
        optimizer.step()

    for _ in range(5):
        step(True), step(False)
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(60):
        for with_flag in ((True, False) if i % 2 else (False, True)):
            dist_utils.barrier(info)
            t0 = time.perf_counter()
            step(with_flag)
            times[with_flag].append(time.perf_counter() - t0)
    alone = []
    for _ in range(200):
        t0 = time.perf_counter()
        dist_utils.max_over_ranks([0, 0], info)
        alone.append(time.perf_counter() - t0)
    if info.is_main:
        with_flag, without = statistics.median(times[True]), statistics.median(times[False])
        print(f"DDP step of the tiny model: {without * 1e3:.2f} ms without the control all-reduce, "
              f"{with_flag * 1e3:.2f} ms with it (ratio {with_flag / without:.3f}); the all-reduce alone: "
              f"median {statistics.median(alone) * 1e6:.0f} µs")
    dist_utils.cleanup()


if __name__ == "__main__":
    main()
