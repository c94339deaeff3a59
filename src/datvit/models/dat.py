"""The DAT / DAT++ network: stem, four stages of blocks, downsampling between them, and a classifier head.

Parameter names follow the authors' code (``patch_proj``, ``stages.<i>.{layer_norms,attns,mlps,
local_perception_units}``, ``down_projs``, ``cls_norm``, ``cls_head``), so their checkpoints load with strict key
matching. Internally the fast path keeps maps channels-last (B×H×W×C); ``reference=True`` (or
``set_reference(True)``) switches every layer to the authors' algorithm on B×C×H×W, the oracle of the fast path.
"""

import contextlib
import dataclasses
import math
from typing import Any, Optional, Sequence, Union

import torch
import torch.fx
import torch.utils.checkpoint
from timm.layers import DropPath, register_notrace_function, trunc_normal_
from timm.models._features import feature_take_indices
from torch import nn

from ..layers import (
    ChannelLayerNorm,
    ConvMlp,
    ConvStem,
    DeformableAttention,
    Downsample,
    LocalAttention,
    Mlp,
    NeighborhoodAttention2D,
    PatchStem,
    ShiftWindowAttention,
)
from ..layers.ops import conv2d_channels_last, residual_depthwise_conv
from ..layers.shapes import conv_input_channels_last, symbolic_sizes
from .checkpoint import fit_state_dict
from .configs import StageConfig, stage_configs, stage_fmap_sizes


@register_notrace_function  # inspects the input's type and sizes, which are Proxies under torch.fx
@torch.jit.ignore  # scripted fx graphs call it in Python (its messages format sizes TorchScript cannot)
def check_image_batch(
    x: torch.Tensor,
    in_chans: int,
    min_input_size: int,
    patch_size: int,
    num_stages: int,
    img_size: Optional[int] = None,
) -> None:
    """Raise ValueError for inputs the network cannot take, naming the problem (see ``DAT.check_input``).
    ``img_size``: the only size a model built with ``strict_img_size=True`` takes (None: any size)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"expected a 4-D batch B×C×H×W, got a {x.ndim}-D tensor of shape {tuple(x.shape)}"
            + (" (add a batch dimension with x.unsqueeze(0))" if x.ndim == 3 else "")
        )
    if x.shape[1] != in_chans:
        raise ValueError(
            f"expected {in_chans} input channels, got {x.shape[1]} (input shape "
            f"{tuple(x.shape)}; build the model with in_chans={x.shape[1]} for other inputs)"
        )
    h, w = x.shape[-2:]
    if symbolic_sizes(h, w):  # a dynamic-size export: an assertion in the graph instead of a branch on the size
        _check_symbolic_size(h, w, min_input_size, patch_size, num_stages)
        return
    if img_size is not None and (h != img_size or w != img_size):
        raise ValueError(
            f"input {h}×{w} differs from the model's img_size {img_size}×{img_size}: the model was built with "
            "strict_img_size=True (build it with dynamic_img_size=True, or call "
            "model.set_input_size(img_size=...), for other sizes)"
        )
    if h < min_input_size or w < min_input_size:
        raise ValueError(
            f"input {h}×{w} is too small: this model downsamples by {min_input_size} "
            f"(patch {patch_size} and {num_stages - 1} downsamplings), so height and "
            f"width must be at least {min_input_size}"
        )
    if not torch.is_floating_point(x):
        raise ValueError(f"expected a floating-point image tensor, got {x.dtype}")


def _check_symbolic_size(h, w, min_input_size: int, patch_size: int, num_stages: int) -> None:
    """The minimum size as ``torch._check`` (a runtime assertion of the exported program, and a bound the shape
    solver uses: every stage then has at least one pixel)."""
    for side in (h, w):
        torch._check(
            side >= min_input_size,
            lambda: (
                f"input {h}×{w} is too small: this model downsamples by {min_input_size} (patch {patch_size} "
                f"and {num_stages - 1} downsamplings), so height and width must be at least {min_input_size}"
            ),
        )


torch.fx.wrap("check_image_batch")
torch.fx.wrap("residual_depthwise_conv")  # a fast-path kernel: a leaf of fx graphs (see layers/tracing.py)


def _square_size(size: Union[int, Sequence[int]], name: str) -> int:
    """An int side from an int or a square (H, W) (timm passes sizes as pairs); the position tables are square."""
    if isinstance(size, int):
        return size
    sides = tuple(int(s) for s in size)
    if len(sides) != 2 or sides[0] != sides[1]:
        raise ValueError(
            f"{name} must be an int or a square (H, W) pair, got {size!r}: DAT's position tables are square"
        )
    return sides[0]


def _stage_window_sizes(window_size: Union[int, Sequence[int]], num_stages: int) -> list[int]:
    """One window side per stage from an int (every stage) or a sequence with one entry per stage."""
    sizes = [int(window_size)] * num_stages if isinstance(window_size, int) else [int(w) for w in window_size]
    if len(sizes) != num_stages:
        raise ValueError(f"window_size has {len(sizes)} entries but there are {num_stages} stages")
    return sizes


def _empty_parameter_like(old: nn.Parameter, shape: tuple[int, ...]) -> nn.Parameter:
    """An uninitialised parameter of ``shape`` on ``old``'s device, in its dtype, as trainable as it: filled by
    ``fit_state_dict`` in ``DAT.set_input_size``."""
    return nn.Parameter(torch.empty(shape, device=old.device, dtype=old.dtype), requires_grad=old.requires_grad)


def _block_attention(config: StageConfig, kind: str) -> nn.Module:
    """The attention of a block of ``kind`` (a letter of ``configs.BLOCK_KINDS``) in a stage built from ``config``."""
    dim, heads, window = config.dim, config.heads, config.window_size
    if kind == "L":
        return LocalAttention(dim, heads, window, config.attn_drop, config.drop, config.fmap_size)
    if kind == "S":
        return ShiftWindowAttention(
            dim, heads, window, math.ceil(window / 2), config.fmap_size, config.attn_drop, config.drop
        )
    if kind == "D":
        return DeformableAttention(
            dim,
            heads,
            config.groups,
            config.fmap_size,
            config.stride,
            config.ksize,
            config.offset_range_factor,
            config.use_pe,
            config.generation,
            config.attn_drop,
            config.drop,
            no_off=config.no_off,
            dwc_pe=config.dwc_pe,
        )
    if kind == "N":
        return NeighborhoodAttention2D(dim, config.nat_ksize, heads, config.attn_drop, config.drop)
    raise ValueError(f"unknown block kind {kind!r}")


class DATStage(nn.Module):
    """A list of pre-norm blocks ``x + DropPath(Attn(LN(x)))``, ``x + DropPath(MLP(LN(x)))``, each optionally
    preceded by a local perception unit ``x + DWConv3×3(x)`` (DAT++). Block kinds come from ``config.stage_spec``.
    """

    def __init__(self, config: StageConfig):
        super().__init__()
        self.config = config
        dim, depth = config.dim, config.depth
        self.depth = depth
        self.stage_spec = list(config.stage_spec)
        self.use_lpu = config.use_lpu
        self.grad_checkpointing = False
        self.proj = nn.Conv2d(config.dim_in, dim, 1) if config.dim_in != dim else nn.Identity()
        self.layer_norms = nn.ModuleList([ChannelLayerNorm(dim, config.layer_norm_eps) for _ in range(2 * depth)])
        mlp_cls = ConvMlp if config.use_dwc_mlp else Mlp
        self.mlps = nn.ModuleList([mlp_cls(dim, config.expansion, config.drop) for _ in range(depth)])
        self.attns = nn.ModuleList([_block_attention(config, kind) for kind in self.stage_spec])
        self.drop_path = nn.ModuleList([DropPath(p) if p > 0 else nn.Identity() for p in config.drop_path])
        self.local_perception_units = nn.ModuleList(
            [nn.Conv2d(dim, dim, 3, 1, 1, groups=dim) if config.use_lpu else nn.Identity() for _ in range(depth)]
        )

    def _block(self, x: torch.Tensor, d: int, reference: bool, return_positions: bool = False):
        """Block ``d`` on channels-last x (fast) or B×C×H×W x (reference)."""
        attn, drop_path = self.attns[d], self.drop_path[d]
        norm1, norm2, mlp = self.layer_norms[2 * d], self.layer_norms[2 * d + 1], self.mlps[d]
        positions = None
        if reference:
            if self.use_lpu:
                x = x + self.local_perception_units[d](x)
            if isinstance(attn, DeformableAttention) and return_positions:
                y, pos, ref = attn.reference_forward(norm1.reference_forward(x), return_positions=True)
                positions = (pos, ref)
            else:
                y = attn.reference_forward(norm1.reference_forward(x))
            x = x + drop_path(y)
            x = x + drop_path(mlp.reference_forward(norm2.reference_forward(x)))
        else:
            if self.use_lpu:
                lpu = self.local_perception_units[d]
                x = residual_depthwise_conv(conv_input_channels_last(x), lpu.weight, lpu.bias)
            if isinstance(attn, DeformableAttention) and return_positions:
                y, pos, ref = attn(norm1(x), return_positions=True)
                positions = (pos, ref)
            else:
                y = attn(norm1(x))
            x = x + drop_path(y)
            x = x + drop_path(mlp(norm2(x)))
        return x, positions

    def forward(self, x: torch.Tensor, reference: bool = False, return_positions: bool = False):
        """``x``: B×H×W×C (fast) or B×C×H×W (reference). With ``return_positions`` also returns a list with
        (positions, references) for every D block and None for the others."""
        if not isinstance(self.proj, nn.Identity):
            x = self.proj(x) if reference else conv2d_channels_last(x, self.proj)
        positions = []
        for d in range(self.depth):
            if self.grad_checkpointing and self.training:
                x, pos = torch.utils.checkpoint.checkpoint(
                    self._block, x, d, reference, return_positions, use_reentrant=False
                )
            else:
                x, pos = self._block(x, d, reference, return_positions)
            positions.append(pos)
        return (x, positions) if return_positions else x


class DAT(nn.Module):
    """Deformable Attention Transformer (v1, CVPR 2022) and DAT++ (``generation="pp"``).

    Arguments are the authors' constructor arguments (per-stage lists), plus ``generation`` (which set of
    geometric conventions to follow), ``in_chans``, ``dense_norms`` (one LayerNorm per stage output, as in the
    authors' detection/segmentation backbones) and ``reference`` (use the plain reference path). The per-stage
    lists are read once, into one ``StageConfig`` per stage (``stages[i].config``).

    timm's construction arguments: ``dynamic_img_size=True`` takes any input size ≥ ``min_input_size`` (the
    default behaviour); ``strict_img_size=True`` (unless ``dynamic_img_size``) takes only ``img_size``×``img_size``
    and raises ValueError naming both sizes otherwise. ``device`` builds the parameters and buffers there (e.g.
    ``"meta"``: shapes only, materialised with ``to_empty(device=...)`` then ``init_weights()`` or a checkpoint
    after ``init_non_persistent_buffers()``); ``dtype`` converts the floating-point parameters and buffers.
    """

    def __init__(
        self,
        img_size: Union[int, Sequence[int]] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        expansion: int = 4,
        dim_stem: int = 96,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 6, 2),
        heads: Sequence[int] = (3, 6, 12, 24),
        stage_spec: Sequence[Sequence[str]] = (("L", "S"), ("L", "S"), ("L", "D") * 3, ("L", "D")),
        window_sizes: Sequence[int] = (7, 7, 7, 7),
        groups: Sequence[int] = (-1, -1, 3, 6),
        strides: Sequence[int] = (-1, -1, 1, 1),
        offset_range_factor: Sequence[float] = (-1, -1, 2, 2),
        use_pes: Sequence[bool] = (False, False, True, True),
        ksizes: Sequence[int] = (9, 7, 5, 3),
        nat_ksizes: Sequence[int] = (7, 7, 7, 7),
        use_dwc_mlps: Sequence[bool] = (False, False, False, False),
        use_lpus: Sequence[bool] = (False, False, False, False),
        use_conv_patches: bool = False,
        no_offs: Sequence[bool] = (False, False, False, False),
        dwc_pes: Sequence[bool] = (False, False, False, False),
        generation: str = "v1",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        dense_norms: bool = False,
        layer_norm_eps: float = 1e-5,
        reference: bool = False,
        strict_img_size: bool = False,
        dynamic_img_size: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        img_size = _square_size(img_size, "img_size")
        # every factory call of the build (parameters, buffers, cached layouts) allocates on ``device``
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self._build(
                img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                expansion=expansion, dim_stem=dim_stem, dims=dims, depths=depths, heads=heads, stage_spec=stage_spec,
                window_sizes=window_sizes, groups=groups, strides=strides, offset_range_factor=offset_range_factor,
                use_pes=use_pes, ksizes=ksizes, nat_ksizes=nat_ksizes, use_dwc_mlps=use_dwc_mlps, use_lpus=use_lpus,
                use_conv_patches=use_conv_patches, no_offs=no_offs, dwc_pes=dwc_pes, generation=generation,
                drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                global_pool=global_pool, dense_norms=dense_norms, layer_norm_eps=layer_norm_eps, reference=reference,
            )  # fmt: skip
        if dtype is not None:
            self.to(dtype=dtype)
        # timm's precedence: a dynamic model takes any size, whatever strict_img_size says
        self.strict_img_size = bool(strict_img_size) and not dynamic_img_size
        self.dynamic_img_size = not self.strict_img_size
        if self.strict_img_size:
            self._traits = dict(fixed_input_size=True)  # what timm's get_model_input_config reports

    def _build(
        self,
        *,
        img_size: int,
        patch_size: int,
        in_chans: int,
        num_classes: int,
        expansion: int,
        dim_stem: int,
        dims: Sequence[int],
        depths: Sequence[int],
        heads: Sequence[int],
        stage_spec: Sequence[Sequence[str]],
        window_sizes: Sequence[int],
        groups: Sequence[int],
        strides: Sequence[int],
        offset_range_factor: Sequence[float],
        use_pes: Sequence[bool],
        ksizes: Sequence[int],
        nat_ksizes: Sequence[int],
        use_dwc_mlps: Sequence[bool],
        use_lpus: Sequence[bool],
        use_conv_patches: bool,
        no_offs: Sequence[bool],
        dwc_pes: Sequence[bool],
        generation: str,
        drop_rate: float,
        attn_drop_rate: float,
        drop_path_rate: float,
        global_pool: str,
        dense_norms: bool,
        layer_norm_eps: float,
        reference: bool,
    ) -> None:
        """The network from the constructor's arguments (on the device the constructor selects)."""
        num_stages = len(dims)
        per_stage = dict(
            depths=depths,
            heads=heads,
            stage_spec=stage_spec,
            window_sizes=window_sizes,
            groups=groups,
            strides=strides,
            offset_range_factor=offset_range_factor,
            use_pes=use_pes,
            ksizes=ksizes,
            nat_ksizes=nat_ksizes,
            use_dwc_mlps=use_dwc_mlps,
            use_lpus=use_lpus,
            no_offs=no_offs,
            dwc_pes=dwc_pes,
        )
        # every per-stage list is read here, once (and checked: one entry per stage, one letter per block)
        configs = stage_configs(
            dims,
            per_stage,
            dim_stem=dim_stem,
            img_size=img_size,
            patch_size=patch_size,
            generation=generation,
            expansion=expansion,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            layer_norm_eps=layer_norm_eps,
        )
        if generation not in ("v1", "pp"):
            raise ValueError(f"generation must be 'v1' (DAT) or 'pp' (DAT++), got {generation!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.generation = generation
        self.img_size = img_size
        self.patch_size = patch_size
        self.dims = list(dims)
        self.num_features = self.head_hidden_size = dims[-1]
        self.drop_rate = drop_rate
        self.reference = reference
        self.grad_checkpointing = False
        # The smallest input for which every stage still has at least one pixel.
        self.min_input_size = patch_size * 2 ** (num_stages - 1)
        if img_size < self.min_input_size:  # the position tables of stage 4 would have a negative size
            raise ValueError(
                f"img_size {img_size} is too small: this model downsamples by {self.min_input_size} "
                f"(patch {patch_size} and {num_stages - 1} downsamplings), so img_size must be at "
                f"least {self.min_input_size}"
            )

        stem_cls = ConvStem if use_conv_patches else PatchStem
        self.patch_proj = stem_cls(in_chans, dim_stem, patch_size, layer_norm_eps)

        self.stages = nn.ModuleList([DATStage(config=config) for config in configs])
        self.feature_info = [
            dict(num_chs=dims[i], reduction=patch_size * 2**i, module=f"stages.{i}") for i in range(num_stages)
        ]
        self.down_projs = nn.ModuleList(
            [Downsample(dims[i], dims[i + 1], use_conv_patches, layer_norm_eps) for i in range(num_stages - 1)]
        )
        self.norms = nn.ModuleList([ChannelLayerNorm(d, layer_norm_eps) for d in dims]) if dense_norms else None
        self.cls_norm = ChannelLayerNorm(dims[-1], layer_norm_eps)
        self.cls_head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        self._zero_offsets()

    def _zero_offsets(self) -> None:
        for m in self.modules():
            if isinstance(m, DeformableAttention):
                # Start with zero offsets: every group samples its reference grid, as a strided attention would.
                nn.init.zeros_(m.conv_offset[3].weight)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The authors' init loop iterates parameters instead of modules and so does nothing; this is timm's.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- timm model API -------------------------------------------------------------------------------------

    @torch.jit.ignore
    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        """Initialise every parameter as the constructor does and recompute the size-derived buffers: a model
        built with ``device="meta"`` and materialised with ``to_empty(device=...)`` is then ready to train.

        timm's signature: ``mode`` is '' (or 'reset', the same); ``needs_reset=False`` skips the
        ``reset_parameters`` of torch's own layers (convolutions, norms) and keeps their current values."""
        if mode not in ("", "reset"):
            raise ValueError(f"init_weights mode must be '' or 'reset', got {mode!r}")
        with torch.no_grad():
            for m in self.modules():
                if needs_reset and m is not self and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                # the position tables, with the layers' constructors' initialisation
                if isinstance(m, LocalAttention):
                    trunc_normal_(m.relative_position_bias_table, std=0.01)
                elif isinstance(m, DeformableAttention) and isinstance(m.rpe_table, nn.Parameter):
                    trunc_normal_(m.rpe_table, std=0.01)
                elif isinstance(m, NeighborhoodAttention2D):
                    trunc_normal_(m.rpb, std=0.02, mean=0.0, a=-2.0, b=2.0)
            self.apply(self._init_weights)
            self._zero_offsets()
        self.init_non_persistent_buffers()

    @torch.jit.ignore
    def init_non_persistent_buffers(self) -> None:
        """Recompute the buffers that follow from the geometry (window position indices, shifted-window masks,
        cached window layouts), on each layer's device. timm's ``reinit_non_persistent_buffers`` calls this; a
        model materialised from the meta device needs it before a checkpoint is loaded into it."""
        for m in self.modules():
            if isinstance(m, LocalAttention):
                m.init_buffers()

    @torch.jit.ignore
    def set_input_size(
        self,
        img_size: Optional[Union[int, Sequence[int]]] = None,
        window_size: Optional[Union[int, Sequence[int]]] = None,
    ) -> None:
        """Change the configured input size (and optionally the window side of the L/S blocks, an int or one
        per stage) in place.

        The position tables are resized exactly as loading this model's state_dict into a model built at the
        new size resizes them (``fit_state_dict``: bicubic), and the size-dependent buffers and cached window
        layouts are rebuilt, so the logits equal that model's. Resized tables are new parameters: build the
        optimizer after this call. A ``strict_img_size`` model then takes the new size only."""
        num_stages = len(self.stages)
        size = self.img_size if img_size is None else _square_size(img_size, "img_size")
        if size < self.min_input_size:
            raise ValueError(
                f"img_size {size} is too small: this model downsamples by {self.min_input_size}, so img_size must "
                f"be at least {self.min_input_size}"
            )
        current = [stage.config.window_size for stage in self.stages]
        windows = current if window_size is None else _stage_window_sizes(window_size, num_stages)
        for i, (stage, w) in enumerate(zip(self.stages, windows)):
            smallest = 2 if "S" in stage.stage_spec else 1  # a shifted window shifts by ⌈w/2⌉ < w
            if w < smallest:
                raise ValueError(f"window_size {w} of stage {i + 1} is too small: at least {smallest}")
        old = self.state_dict()
        fmaps = stage_fmap_sizes(size, self.patch_size, num_stages)
        for stage, fmap, w in zip(self.stages, fmaps, windows):
            for attn in stage.attns:
                if isinstance(attn, LocalAttention):
                    if w != attn.window_size:
                        attn.window_size = w
                        attn.relative_position_bias_table = _empty_parameter_like(
                            attn.relative_position_bias_table, ((2 * w - 1) ** 2, attn.heads)
                        )
                    if isinstance(attn, ShiftWindowAttention):
                        attn.shift_size = math.ceil(w / 2)  # as _block_attention builds it
                    attn.fmap_size = fmap
                    attn.init_buffers()
                elif isinstance(attn, DeformableAttention):
                    attn.fmap_size = fmap
                    if isinstance(attn.rpe_table, nn.Parameter):
                        attn.rpe_table = _empty_parameter_like(attn.rpe_table, (attn.heads, 2 * fmap - 1, 2 * fmap - 1))
            stage.config = dataclasses.replace(stage.config, fmap_size=fmap, window_size=w)
        self.img_size = size
        self.load_state_dict(fit_state_dict(old, self))
        try:  # timm ≥ 1.0.31 records the size for get_model_input_config and hub configs
            from timm.models._input import update_model_input_size
        except ImportError:
            return
        update_model_input_size(self, size, window_sizes=tuple(windows))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Position tables (biases and norms are excluded by timm's optimizer factory already)."""
        return {
            n for n, _ in self.named_parameters() if n.endswith(("relative_position_bias_table", "rpe_table", ".rpb"))
        }

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^patch_proj",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.(?:attns|mlps|local_perception_units)\.(\d+)", None),
                (r"^stages\.(\d+)\.layer_norms\.(\d+)", None),
                (r"^down_projs\.(\d+)", (0,)),
                (r"^cls_norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def load_pretrained(self, path: str) -> None:
        """timm's ``custom_load`` hook: ``pretrained=True, pretrained_cfg_overlay=dict(file=...)`` lands here."""
        from .checkpoint import load_checkpoint

        load_checkpoint(self, path)

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script(model)`` compiles: the same modules regrouped per block (``models/scripting.py``;
        TorchScript cannot index ``ModuleList`` by a variable nor run the stage generator)."""
        from .scripting import ScriptableDAT

        return ScriptableDAT(self)

    def set_reference(self, enable: bool = True) -> "DAT":
        """Switch every layer between the fast path and the plain reference path (the authors' algorithm)."""
        self.reference = enable
        return self

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.cls_head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.cls_head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # -- forward -----------------------------------------------------------------------------------------------

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError for inputs the network cannot take, naming the problem."""
        check_image_batch(
            x,
            self.in_chans,
            self.min_input_size,
            self.patch_size,
            len(self.stages),
            self.img_size if self.strict_img_size else None,
        )

    def _stage_outputs(self, x: torch.Tensor, stop: Optional[int] = None, return_positions: bool = False):
        """Run stem and stages; yield (index, stage output in the internal layout, positions) per stage."""
        self.check_input(x)
        ref = self.reference
        x = self.patch_proj.reference_forward(x) if ref else self.patch_proj(x)
        last = len(self.stages) - 1 if stop is None else stop
        for i, stage in enumerate(self.stages):
            if return_positions:
                x, pos = stage(x, ref, True)
            else:
                x, pos = stage(x, ref), None
            yield i, x, pos
            if i >= last:
                break
            if i < len(self.down_projs):
                x = self.down_projs[i].reference_forward(x) if ref else self.down_projs[i](x)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """cls_norm on the last map; returns B×C×H×W."""
        if self.reference:
            return self.cls_norm.reference_forward(x) if isinstance(self.cls_norm, ChannelLayerNorm) else x
        return self.cls_norm(x).permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image B×C×H×W → normalised last-stage map B×C'×H/32×W/32."""
        for _, last, _ in self._stage_outputs(x):
            pass
        return self._final_norm(last)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool and classifier; ``pre_logits`` stops before the Linear."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        return x if pre_logits else self.cls_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits B×num_classes."""
        return self.forward_head(self.forward_features(x))

    def forward_with_positions(self, x: torch.Tensor):
        """Logits plus, per stage, a list with (sampled positions, reference points) of every D block (None for
        other blocks); each B×G×Hk×Wk×2 in (y, x) order, normalised to [−1, 1]. For visualisation."""
        positions = []
        for _, last, pos in self._stage_outputs(x, return_positions=True):
            positions.append(pos)
        return self.forward_head(self._final_norm(last)), positions

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Stage outputs (strides 4, 8, 16, 32), each through its own LayerNorm when the model has the dense
        norms (``dense_norms=True``, as built by ``features_only=True``). ``norm`` is accepted for timm
        compatibility; the per-stage norms already play that role."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        stop = max_index if (stop_early or intermediates_only) else None
        for i, last, _ in self._stage_outputs(x, stop=stop):
            if i in take:
                y = last
                if self.norms is not None:
                    y = self.norms[i].reference_forward(y) if self.reference else self.norms[i](y)
                if self.reference:
                    y = y if output_fmt == "NCHW" else y.permute(0, 2, 3, 1)
                else:
                    y = y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self._final_norm(last), intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, list[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages (and head) that the requested intermediates do not need."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        self.down_projs = self.down_projs[:max_index]
        if self.norms is not None:
            self.norms = self.norms[: max_index + 1]
        if prune_head:
            self.cls_norm = nn.Identity()
            self.reset_classifier(0, "")
        return take
