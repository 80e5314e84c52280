"""vitdeploy: compress timm Vision Transformers and ship them."""
__version__ = "0.1.0"
