"""DAT / DAT++ models, their registry in timm, and checkpoint loading."""

from .checkpoint import (
    CheckpointError,
    extract_state_dict,
    fit_state_dict,
    load_checkpoint,
    load_state_dict_checked,
    read_checkpoint,
)
from .configs import (
    MODEL_CONFIGS,
    StageConfig,
    model_config,
    stage_spec_for,
    translate_authors_config,
)
from .dat import DAT, DATStage
from .factory import count_parameters
from .registry import VARIANTS, from_authors_config

__all__ = [
    "CheckpointError",
    "DAT",
    "DATStage",
    "MODEL_CONFIGS",
    "StageConfig",
    "VARIANTS",
    "count_parameters",
    "extract_state_dict",
    "fit_state_dict",
    "from_authors_config",
    "load_checkpoint",
    "load_state_dict_checked",
    "model_config",
    "read_checkpoint",
    "stage_spec_for",
    "translate_authors_config",
]
