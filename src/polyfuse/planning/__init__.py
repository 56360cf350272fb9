"""Settings from the data: profile a table, derive a plan, hold out validation rows."""
from .plan import PRESETS, Plan, apply_plan, format_plan, make_plan
from .profile import profile_table
from .split import holdout

__all__ = ["PRESETS", "Plan", "apply_plan", "format_plan", "make_plan", "profile_table", "holdout"]
