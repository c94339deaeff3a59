"""The datvit benchmark harness (``datvit bench``): speed, memory and FLOP efficiency of DAT / DAT++ against timm's
Swin-T and ConvNeXt-T, measured interleaved in one process so the ratios mean something on a shared machine.

``run`` is the benchmark (options, orchestration), ``worker`` the measurements that need a fresh process
(training memory, torch.compile), ``common`` subjects, timing, FLOPs and machine description, ``report`` the
tables, ratios and chart. The source checkout's ``benchmarks/`` holds thin entry points and the profiling
scripts. See docs/benchmarks.md.
"""
