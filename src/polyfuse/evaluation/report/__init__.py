"""The self-contained HTML evaluation report (`polyfuse evaluate --report`)."""
from .page import write_report

__all__ = ["write_report"]
