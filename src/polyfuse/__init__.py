"""Polyfuse: multimodal deep learning on tables of text, images and audio."""
from .api import Polyfuse, load
from .config import Config
from .errors import ConfigError, InputError, PolyfuseError

__version__ = "0.1.0"
__all__ = ["Polyfuse", "load", "Index", "Config", "ConfigError", "InputError", "PolyfuseError", "__version__"]


def __getattr__(name):
    # polyfuse.Index loads FAISS only when search is used, not on every `import polyfuse`.
    if name == "Index":
        from .retrieval.index import Index
        return Index
    raise AttributeError(f"module 'polyfuse' has no attribute {name!r}")
