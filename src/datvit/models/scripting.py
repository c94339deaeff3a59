"""The TorchScript form of ``DAT``: ``torch.jit.script(model)`` scripts this instead (``DAT.__prepare_scriptable__``).

TorchScript indexes a ``ModuleList`` only with literal integers and cannot run generators, so ``DATStage``'s
``attns[d]`` / ``layer_norms[2·d]`` and ``DAT``'s stage generator do not script. This module regroups the same
submodule objects (shared, not copied) per block and per stage, so the scripted model iterates them; it runs the
fast path on channels-last maps, exactly the eager ``forward``. Its ``state_dict`` keys follow this grouping
(``stages.<i>.blocks.<d>.attn...``), not the authors' names: load weights into ``DAT`` before scripting.
"""

from typing import List, Optional

import torch
from torch import nn

from ..layers import ChannelLayerNorm
from ..layers.ops import residual_depthwise_conv

_NONE, _TO_CHANNELS_LAST, _TO_CHANNELS_FIRST = 0, 1, 2


class ScriptableConvNorm(nn.Module):
    """A stem or downsampling (``layers/embed.py``: convs on B×C×H×W, LayerNorms channels-last) with the permutes
    planned once here: scripted, the eager loop's ``channels_last`` flag loses a permute."""

    permutes: List[int]
    output_permute: int

    def __init__(self, sequence: nn.Sequential, channels_last_input: bool):
        super().__init__()
        self.layers = nn.ModuleList(list(sequence))
        channels_last, self.permutes = channels_last_input, []
        for layer in sequence:
            step = _NONE
            if isinstance(layer, ChannelLayerNorm) and not channels_last:
                step, channels_last = _TO_CHANNELS_LAST, True
            elif isinstance(layer, nn.Conv2d) and channels_last:
                step, channels_last = _TO_CHANNELS_FIRST, False
            self.permutes.append(step)
        self.output_permute = _NONE if channels_last else _TO_CHANNELS_LAST

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            step = self.permutes[i]
            if step == 1:  # _TO_CHANNELS_LAST (TorchScript reads no module-level constants)
                x = x.permute(0, 2, 3, 1)
            elif step == 2:  # _TO_CHANNELS_FIRST
                x = x.permute(0, 3, 1, 2)
            x = layer(x)
        if self.output_permute == 1:
            x = x.permute(0, 2, 3, 1)
        return x


class ScriptableBlock(nn.Module):
    """``x + DropPath(Attn(LN(x)))``, ``x + DropPath(MLP(LN(x)))``, after the LPU of DAT++ when it has one."""

    def __init__(self, stage: nn.Module, d: int):
        super().__init__()
        if isinstance(stage.local_perception_units[d], nn.Conv2d):
            self.lpu = stage.local_perception_units[d]
        self.norm1, self.attn = stage.layer_norms[2 * d], stage.attns[d]
        self.norm2, self.mlp = stage.layer_norms[2 * d + 1], stage.mlps[d]
        self.drop_path = stage.drop_path[d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "lpu"):  # a static check in TorchScript (isinstance on submodules is not)
            x = residual_depthwise_conv(x, self.lpu.weight, self.lpu.bias)
        y = self.attn(self.norm1(x))
        assert isinstance(y, torch.Tensor)  # DeformableAttention may also return positions (not asked here)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ScriptableStage(nn.Module):
    """The downsampling into the stage (conv on B×C×H×W, LayerNorm channels-last), the 1×1 projection, the blocks."""

    def __init__(self, stage: nn.Module, downsample: Optional[nn.Module]):
        super().__init__()
        if downsample is not None:
            self.downsample = ScriptableConvNorm(downsample, channels_last_input=True)
        if isinstance(stage.proj, nn.Conv2d):
            self.proj = stage.proj
        self.blocks = nn.ModuleList([ScriptableBlock(stage, d) for d in range(stage.depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "proj"):
            x = self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        return x


class ScriptableDAT(nn.Module):
    """``DAT.forward`` (fast path) in a form TorchScript compiles; see the module docstring."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.reference:
            raise ValueError("torch.jit.script scripts the fast path: call model.set_reference(False) first")
        self.in_chans: int = model.in_chans
        self.min_input_size: int = model.min_input_size
        self.strict_size: int = model.img_size if model.strict_img_size else 0  # 0: any size
        self.average_pool: bool = model.global_pool == "avg"
        self.num_classes: int = model.num_classes
        self.patch_proj = ScriptableConvNorm(model.patch_proj, channels_last_input=False)
        self.stages = nn.ModuleList(
            [ScriptableStage(stage, model.down_projs[i - 1] if i > 0 else None) for i, stage in enumerate(model.stages)]
        )
        self.cls_norm = model.cls_norm
        self.cls_head = model.cls_head

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError("expected a 4-D batch B×C×H×W, got a {}-D tensor".format(x.dim()))
        if x.shape[1] != self.in_chans:
            raise ValueError("expected {} input channels, got {}".format(self.in_chans, x.shape[1]))
        if self.strict_size > 0 and (x.shape[2] != self.strict_size or x.shape[3] != self.strict_size):
            raise ValueError(
                "input {}×{} differs from the model's img_size {}×{} (strict_img_size=True)".format(
                    x.shape[2], x.shape[3], self.strict_size, self.strict_size
                )
            )
        if x.shape[2] < self.min_input_size or x.shape[3] < self.min_input_size:
            raise ValueError(
                "input {}×{} is too small: height and width must be at least {}".format(
                    x.shape[2], x.shape[3], self.min_input_size
                )
            )
        if not torch.is_floating_point(x):
            raise ValueError("expected a floating-point image tensor")

    @torch.jit.export
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image B×C×H×W → normalised last-stage map B×C'×H/32×W/32."""
        self.check_input(x)
        x = self.patch_proj(x)
        for stage in self.stages:
            x = stage(x)
        x = self.cls_norm(x)  # ChannelLayerNorm, or Identity after prune_intermediate_layers
        return x.permute(0, 3, 1, 2)

    @torch.jit.export
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.average_pool:
            x = x.mean(dim=[2, 3])
        return x if pre_logits else self.cls_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), False)


__all__ = ["ScriptableDAT", "ScriptableStage", "ScriptableBlock"]
