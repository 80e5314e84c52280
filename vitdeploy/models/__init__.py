"""Models: loading (timm names, checkpoints, model dirs), surgery modules, the model-dir format, params and MACs."""
from vitdeploy.models.arch import ArchSpec, AttnDims, BlockDims, MlpDims, build, check_supported, describe
from vitdeploy.models.load import LoadedModel, load_model, load_model_dir
from vitdeploy.models.modeldir import is_model_dir, save_model_dir
from vitdeploy.models.stats import block_table, count_macs, count_params
from vitdeploy.models.surgery import IndexSelect, LowRankLinear, PrunedAttention, PrunedMlp, slice_attention, slice_mlp

__all__ = [
    "ArchSpec", "AttnDims", "BlockDims", "MlpDims", "build", "check_supported", "describe",
    "LoadedModel", "load_model", "load_model_dir", "is_model_dir", "save_model_dir",
    "block_table", "count_macs", "count_params",
    "IndexSelect", "LowRankLinear", "PrunedAttention", "PrunedMlp", "slice_attention", "slice_mlp",
]
