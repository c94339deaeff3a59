"""A/B measurements of single speed levers, each interleaved in one process (A, B, A, B, ...; the ratio of every
pair; median and spread over the pairs), as docs/benchmarks.md "Levers" reports them (``datvit bench levers``).

    datvit bench levers                       # every lever below (batch 32)
    datvit bench levers attention dwconv --pairs 20
    datvit bench levers adamw --models dat_tiny,swin

Levers:
* ``attention`` — biased attention forward+backward at dat_tiny's D-block shape (B×12 heads, 196 queries and keys,
  per-batch bias) and stage-1 window shape (B·64 windows × 3 heads, 49×49, shared bias): the explicit form
  (matmul, add, softmax, matmul) vs ``ChunkedBiasedAttention`` vs SDPA's math path (what SDPA does with a bias
  that needs a gradient on CPU).
* ``dwconv`` — DAT++'s depthwise 3×3 convolution forward+backward (ConvMlp hidden maps at stages 1 and 3):
  oneDNN (mkldnn) vs ATen's native kernel, on the channels-last-strided input the fast path passes, and on an
  NCHW-contiguous copy.
* ``linear`` — the token projections (qkv, fc1, fc2 at every stage) forward+backward: ``F.linear`` (MKL's sgemm)
  vs ``datvit.layers.ops.dense`` (oneDNN).
* ``swin_linear`` — a Swin-T training step as timm builds it vs with its ``nn.Linear`` layers routed through
  ``dense``, and dat_tiny: the context for the DAT/Swin-T ratios.
* ``adamw`` — the optimizer step of a training step: torch's CPU default (per-parameter loop), foreach, fused.
* ``bf16_gap`` — where compiled bf16 dat_tiny loses to Swin-T (CPUs with native bf16): inference of dat_tiny, then
  of the same weights without the D blocks' position bias, also without their offset network (zero offsets), also
  without the sampling (keys from the map itself), of dat_tiny with its D blocks replaced by window (L) blocks,
  and of Swin-T, each through ``optimize_for_inference(dtype="bfloat16")`` (compiled, frozen). Not run by default
  (six compiles, minutes): name it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from . import common


def ab(fns: dict[str, Callable[[], object]], pairs: int, warmup: int = 2) -> dict[str, dict]:
    """Interleaved timing of every function on the CPU (:func:`common.time_interleaved`); per function the median
    ms and the per-round ratio time(first) / time(function): median, min, max."""
    import torch

    times = common.time_interleaved(fns, warmup, pairs, torch.device("cpu"))
    base = times[next(iter(fns))]
    out = {}
    for k, t in times.items():
        r = [a / b for a, b in zip(base, t)]
        out[k] = dict(ms=1e3 * statistics.median(t), speedup=statistics.median(r), min=min(r), max=max(r))
    return out


def _print(title: str, res: dict[str, dict]) -> None:
    print(f"\n{title}")
    for k, v in res.items():
        print(
            f"  {k:34s} {v['ms']:9.1f} ms   speed-up over the first {v['speedup']:.3f} "
            f"(pairs {v['min']:.2f}–{v['max']:.2f})"
        )


def _flatten(t, n: int):
    return t.reshape(n, *t.shape[-2:])


def _chunked_attention_class():
    """The dropped lever, kept to reproduce its measurement: the explicit form and its backward over chunks of the
    batch×heads axis (scores of one chunk stay in cache), the same math as the package's explicit form."""
    import torch

    class ChunkedBiasedAttention(torch.autograd.Function):
        """softmax(q·kᵀ·scale + bias)·v with its backward, both computed over chunks of the batch×heads axis.

        Same algorithm as the explicit form (``baddbmm``, ``softmax``, ``bmm``; the backward is softmax's own
        ``_softmax_backward_data``), so it matches it to float rounding. What changes is the memory traffic: each
        chunk's L×S scores are produced, normalised and consumed while they are still in cache, and the backward
        writes the bias gradient straight into its buffer. Saved for backward: q, k, v and the probabilities.
        """

        @staticmethod
        def forward(ctx, q, k, v, bias, scale: float, chunk_bytes: int = 1 << 20):
            lead, L, S, c = q.shape[:-2], q.shape[-2], k.shape[-2], v.shape[-1]
            n = lead.numel()
            q3, k3, v3 = _flatten(q, n), _flatten(k, n), _flatten(v, n)
            b3 = bias.expand(*lead, L, S).reshape(n, L, S)
            chunk = max(1, chunk_bytes // (L * S * q.element_size()))
            probs = q.new_empty(n, L, S)
            out = q.new_empty(n, L, c)
            for i in range(0, n, chunk):
                s = slice(i, i + chunk)
                scores = torch.baddbmm(b3[s], q3[s], k3[s].transpose(1, 2), alpha=scale)
                torch.softmax(scores, -1, out=probs[s])
                torch.bmm(probs[s], v3[s], out=out[s])
            ctx.save_for_backward(q3, k3, v3, probs)
            ctx.scale, ctx.chunk, ctx.lead, ctx.bias_shape = scale, chunk, lead, bias.shape
            return out.view(*lead, L, c)

        @staticmethod
        def backward(ctx, grad_out):
            q3, k3, v3, probs = ctx.saved_tensors
            n, L, S = probs.shape
            g3 = _flatten(grad_out, n)
            dq, dk, dv = torch.empty_like(q3), torch.empty_like(k3), torch.empty_like(v3)
            dscores = torch.empty_like(probs)
            for i in range(0, n, ctx.chunk):
                s = slice(i, i + ctx.chunk)
                torch.bmm(probs[s].transpose(1, 2), g3[s], out=dv[s])
                dprobs = torch.bmm(g3[s], v3[s].transpose(1, 2))
                dscores[s] = torch._softmax_backward_data(dprobs, probs[s], -1, probs.dtype)
                torch.bmm(dscores[s], k3[s], out=dq[s]).mul_(ctx.scale)
                torch.bmm(dscores[s].transpose(1, 2), q3[s], out=dk[s]).mul_(ctx.scale)
            lead = ctx.lead
            dbias = None
            if ctx.needs_input_grad[3]:
                dbias = dscores.view(*lead, L, S).sum_to_size(ctx.bias_shape)
            return (dq.view(*lead, L, -1), dk.view(*lead, S, -1), dv.view(*lead, S, -1), dbias, None, None)

    return ChunkedBiasedAttention


def lever_attention(batch: int, pairs: int) -> None:
    import torch
    import torch.nn.functional as F

    from datvit.layers import attention

    chunked = _chunked_attention_class()

    def case(lead, L, S, c, bias_shape):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(*lead, n, c, generator=g).requires_grad_() for n in (L, S, S))
        bias = torch.randn(*bias_shape, generator=g).requires_grad_()
        grad = torch.randn(*lead, L, c, generator=g)

        def run(kind: str):
            def step():
                for t in (q, k, v, bias):
                    t.grad = None
                if kind == "sdpa-math":
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
                elif kind == "chunked":
                    out = chunked.apply(q, k, v, bias, c**-0.5)
                else:
                    out = attention.biased_attention(q, k, v, bias)
                out.backward(grad)

            return step

        return {"explicit": run("explicit"), "chunked": run("chunked"), "sdpa-math": run("sdpa-math")}

    _print(
        f"D-block attention fwd+bwd, B={batch}, 12 heads, 196×196, c=32, per-batch bias",
        ab(case((batch, 12), 196, 196, 32, (batch, 12, 196, 196)), pairs),
    )
    _print(
        f"window attention fwd+bwd, {batch}·64 windows, 3 heads, 49×49, c=32, shared bias",
        ab(case((batch * 64, 3), 49, 49, 32, (1, 3, 49, 49)), pairs),
    )


def lever_dwconv(batch: int, pairs: int) -> None:
    import torch
    import torch.nn.functional as F

    for channels, size in ((256, 56), (1024, 14)):
        g = torch.Generator().manual_seed(0)
        x_cl = torch.randn(batch, size, size, channels, generator=g).permute(0, 3, 1, 2).requires_grad_()
        x_nchw = x_cl.detach().contiguous().requires_grad_()
        w = torch.randn(channels, 1, 3, 3, generator=g).requires_grad_()
        grad_cl = torch.randn(batch, size, size, channels, generator=g).permute(0, 3, 1, 2)
        grad_nchw = grad_cl.contiguous()

        def run(x, grad, mkldnn: bool):
            def step():
                x.grad = w.grad = None
                with torch.backends.mkldnn.flags(enabled=mkldnn):
                    F.conv2d(x, w, None, 1, 1, 1, channels).backward(grad)

            return step

        _print(
            f"depthwise 3×3 fwd+bwd, B={batch}, {channels} channels, {size}×{size}",
            ab(
                {
                    "mkldnn, channels-last": run(x_cl, grad_cl, True),
                    "native, channels-last": run(x_cl, grad_cl, False),
                    "mkldnn, NCHW": run(x_nchw, grad_nchw, True),
                    "native, NCHW": run(x_nchw, grad_nchw, False),
                },
                pairs,
            ),
        )


def lever_adamw(models: Sequence[str], pairs: int) -> None:
    """One AdamW step over a model's parameters (random gradients): torch's CPU default (a loop over parameters)
    vs ``foreach=True`` vs ``fused=True``."""
    import torch

    for name in models:
        model = common.build_model(common.subject_for(name), torch.device("cpu"))
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p)
        opts = {
            "default": torch.optim.AdamW(params, lr=1e-4),
            "foreach": torch.optim.AdamW(params, lr=1e-4, foreach=True),
            "fused": torch.optim.AdamW(params, lr=1e-4, fused=True),
        }
        _print(
            f"AdamW step, {name} ({sum(p.numel() for p in params) / 1e6:.1f}M parameters)",
            ab({k: o.step for k, o in opts.items()}, pairs),
        )


def lever_linear(batch: int, pairs: int) -> None:
    """The token projections of dat_tiny / Swin-T (same shapes in both) forward+backward at every stage:
    ``F.linear`` (MKL's sgemm) vs ``datvit.layers.ops.dense`` (oneDNN, a 1×1 convolution on a channels-last view)."""
    import torch
    import torch.nn.functional as F

    from datvit.layers.ops import dense

    for hw, c in ((56, 96), (28, 192), (14, 384), (7, 768)):
        for name, c_in, c_out in (("qkv", c, 3 * c), ("fc1", c, 4 * c), ("fc2", 4 * c, c)):
            x = torch.randn(batch, hw, hw, c_in, requires_grad=True)
            w = torch.randn(c_out, c_in).mul_(c_in**-0.5).requires_grad_(True)
            b = torch.zeros(c_out, requires_grad=True)
            grad = torch.randn(batch, hw, hw, c_out)

            def run(fn):
                def step():
                    fn(x, w, b).backward(grad)

                return step

            _print(
                f"{name} {c_in}→{c_out} on B×{hw}×{hw} tokens, forward+backward",
                ab({"F.linear (MKL)": run(F.linear), "dense (oneDNN)": run(dense)}, pairs),
            )


def lever_swin_linear(batch: int, pairs: int) -> None:
    """What the same routing would give timm's Swin-T: a training step (forward, backward; no optimizer) of
    Swin-T as timm builds it vs Swin-T with every ``nn.Linear`` calling ``dense``, and dat_tiny for reference.
    (datvit does not patch timm's models; this is the context for the DAT/Swin ratios.)"""
    import timm
    import torch
    from torch import nn

    from datvit.layers.ops import dense

    def linear_forward(self, x):
        return dense(x, self.weight, self.bias)

    plain = timm.create_model("swin_tiny_patch4_window7_224").train()
    routed = timm.create_model("swin_tiny_patch4_window7_224").train()
    routed.load_state_dict(plain.state_dict())
    for m in routed.modules():
        if type(m) is nn.Linear:
            m.forward = linear_forward.__get__(m)
    dat = timm.create_model("dat_tiny").train()
    x = torch.randn(batch, 3, 224, 224)

    def run(model):
        def step():
            model.zero_grad(set_to_none=True)
            model(x).float().mean().backward()

        return step

    _print(
        f"training step (forward+backward) at batch {batch}",
        ab(
            {"Swin-T (timm)": run(plain), "Swin-T, Linear → dense": run(routed), "dat_tiny (datvit)": run(dat)},
            pairs,
            warmup=1,
        ),
    )


def bf16_gap_models(img_size: int = 224) -> dict:
    """The subjects of ``bf16_gap``, label → model (random weights, shared by the dat_tiny variants): dat_tiny; the
    same weights with what only DAT computes taken away one part at a time — the D blocks' position bias; then
    their offset network (zero offsets: the keys are sampled at the reference points); then the sampling itself
    (keys and values straight from the map, ``no_off``); dat_tiny with its D blocks replaced by L window blocks;
    and Swin-T."""
    import timm
    import torch

    from datvit.layers import DeformableAttention

    torch.manual_seed(0)
    dat = timm.create_model("dat_tiny", img_size=img_size)

    def variant(change: Callable[[DeformableAttention], None]):
        model = timm.create_model("dat_tiny", img_size=img_size)
        model.load_state_dict(dat.state_dict())
        for m in model.modules():
            if isinstance(m, DeformableAttention):
                change(m)
        return model

    def no_bias(m: DeformableAttention) -> None:
        m.rpe_table = None

    def zero_offsets(m: DeformableAttention) -> None:
        no_bias(m)
        groups, stride = m.groups, m.stride

        def offsets(q: torch.Tensor) -> torch.Tensor:  # what the offset network returns, without running it
            B, H, W, _ = q.shape
            return q.new_zeros(B * groups, H // stride, W // stride, 2)

        m._offsets_channels_last = offsets

    def no_sampling(m: DeformableAttention) -> None:
        no_bias(m)
        m.no_off = True  # keys and values from the map itself (average-pooled by the stride: 1 in dat_tiny)

    spec = [["L" if k == "D" else k for k in stage.stage_spec] for stage in dat.stages]
    return {
        "dat_tiny": dat,
        "− position bias": variant(no_bias),
        "− bias, offset network": variant(zero_offsets),
        "− bias, offsets, sampling": variant(no_sampling),
        "D blocks → L (windows)": timm.create_model("dat_tiny", img_size=img_size, stage_spec=spec),
        "Swin-T (timm)": timm.create_model("swin_tiny_patch4_window7_224", img_size=img_size),
    }


def lever_bf16_gap(batch: int, pairs: int, img_size: int = 224) -> None:
    """Compiled bf16 inference of every :func:`bf16_gap_models` subject, interleaved: the differences between
    neighbours are what each part of the D blocks costs under the same treatment, and the last D-block variant
    against the window net is the price of attending to all of the map's keys instead of one window's."""
    import torch

    from datvit import optimize_for_inference
    from datvit.layers.ops import cpu_native_bf16

    if not cpu_native_bf16():
        print("\nbf16_gap: skipped, this CPU has no native bf16 (AVX512-BF16 or AMX)")
        return
    x = torch.randn(batch, 3, img_size, img_size)
    fns = {}
    for label, model in bf16_gap_models(img_size).items():
        fast = optimize_for_inference(model, dtype="bfloat16")
        print(f"  compiling {label} ...", flush=True)
        fast(x)

        def step(fast=fast):
            with torch.no_grad():
                fast(x)

        fns[label] = step
    _print(f"compiled bf16 inference at batch {batch}, {img_size}² (speed-up over dat_tiny)", ab(fns, pairs, warmup=1))


@dataclass(frozen=True, kw_only=True)
class LeversConfig:
    """Which ``levers`` (names of :data:`LEVERS`; empty: all) :func:`run` measures, at ``batch_size``, over
    ``pairs`` interleaved rounds; ``models``: the adamw lever's."""

    levers: tuple[str, ...] = ()
    batch_size: int = 32
    pairs: int = 15
    models: tuple[str, ...] = ("dat_tiny",)
    threads: Optional[int] = None
    allocator: str = "tuned"

    def __post_init__(self) -> None:
        common.freeze_sequences(self, ("levers", "models"))


LEVERS: dict[str, Callable[[LeversConfig], None]] = {
    "attention": lambda c: lever_attention(c.batch_size, c.pairs),
    "dwconv": lambda c: lever_dwconv(c.batch_size, c.pairs),
    "adamw": lambda c: lever_adamw(c.models, c.pairs),
    "linear": lambda c: lever_linear(c.batch_size, c.pairs),
    "swin_linear": lambda c: lever_swin_linear(c.batch_size, c.pairs),
    "bf16_gap": lambda c: lever_bf16_gap(c.batch_size, c.pairs),
}
# Levers run only when named (minutes of compiling each).
ON_REQUEST = ("bf16_gap",)


def run(config: LeversConfig) -> None:
    """Measure and print each chosen lever; ValueError for a name that is not a lever."""
    unknown = [lever for lever in config.levers if lever not in LEVERS]
    if unknown:
        raise ValueError(f"unknown lever(s) {', '.join(unknown)}; choose from {', '.join(LEVERS)}")
    common.apply_allocator(config.allocator)
    print(f"{common.set_threads(config.threads)} threads, allocator {config.allocator}")
    for lever in config.levers or [name for name in LEVERS if name not in ON_REQUEST]:
        LEVERS[lever](config)
