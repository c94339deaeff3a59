"""The datvit benchmark (``datvit bench``) and the measuring tools around it: speed, memory and FLOP efficiency of
DAT / DAT++ against timm's Swin-T and ConvNeXt-T, measured interleaved in one process so the ratios mean something
on a shared machine.

* ``run`` — the benchmark: options, and one function per phase (inference, training, memory, compile, module);
* ``worker`` — the measurements that need a fresh process (training steps, peak memory, torch.compile);
* ``common`` — subjects, model construction, interleaved timing, FLOPs, the matmul peak, the machine;
* ``report`` — ratios, target checks, markdown tables and the chart;
* ``deformable`` — the DeformableAttention module alone, fast vs reference;
* tools, each ``python -m datvit.tools.benchmark.<name> --help``: ``profile`` (torch.profiler tables by op, shape
  and block), ``levers`` (A/B of single speed levers), ``deploy`` (bf16/int8, eager/compiled: accuracy and
  speed), ``export_all`` (every variant × export format), ``cuda_check`` (the GPU checks as one script).

See docs/benchmarks.md.
"""
