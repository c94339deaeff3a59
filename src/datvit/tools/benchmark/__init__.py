"""The datvit benchmark (``datvit bench``) and the measuring tools around it: speed, memory and FLOP efficiency of
DAT / DAT++ against timm's Swin-T and ConvNeXt-T, measured interleaved in one process so the ratios mean something
on a shared machine.

* ``run`` — the benchmark: its config (``BenchConfig``), and one function per phase (inference, training, memory,
  compile, module);
* ``worker`` — the measurements that need a fresh process (training steps, peak memory, torch.compile);
* ``common`` — subjects, model construction, interleaved timing, FLOPs, the matmul peak, the machine;
* ``report`` — ratios, target checks, markdown tables and the chart;
* ``deformable`` — the DeformableAttention module alone, fast vs reference;
* tools, each a config and ``run(config)``, on the command line ``datvit bench <tool>``: ``profile``
  (torch.profiler tables by op, shape and block), ``levers`` (A/B of single speed levers), ``deploy`` (bf16/int8,
  eager/compiled: accuracy and speed), ``export_all`` (every variant × export format; ``export-all``),
  ``cuda_check`` (the GPU checks in one command; ``cuda-check``).

The flags live in :mod:`datvit.cli.bench`; these modules take the typed configs.

See docs/benchmarks.md.
"""
