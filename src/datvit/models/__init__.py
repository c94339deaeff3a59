"""DAT / DAT++ models, their registry in timm, and checkpoint loading."""
from .checkpoint import (CheckpointError, extract_state_dict, fit_state_dict, load_checkpoint, load_state_dict_checked,
                         read_checkpoint)
from .configs import MODEL_CONFIGS, model_config, translate_authors_config
from .dat import DAT, DATStage
from .registry import VARIANTS, from_authors_config

__all__ = ["CheckpointError", "DAT", "DATStage", "MODEL_CONFIGS", "VARIANTS", "extract_state_dict", "fit_state_dict",
           "load_state_dict_checked",
           "from_authors_config", "load_checkpoint", "model_config", "read_checkpoint", "translate_authors_config"]
