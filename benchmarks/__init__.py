"""datvit benchmarks: speed, memory and FLOP efficiency of DAT / DAT++ against timm's Swin-T and ConvNeXt-T.

Run ``python -m benchmarks.run --help`` (or ``datvit bench --help``); see ``docs/benchmarks.md``.
Profiling helpers: ``python -m benchmarks.profile`` and ``python -m benchmarks.graph_breaks``.
"""
