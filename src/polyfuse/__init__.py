"""Polyfuse: multimodal deep learning on tables of text, images and audio."""
from .api import Polyfuse, load
from .config import Config
from .errors import ConfigError, InputError, PolyfuseError
from .retrieval.index import Index

__version__ = "0.1.0"
__all__ = ["Polyfuse", "load", "Config", "ConfigError", "InputError", "PolyfuseError", "__version__"]
