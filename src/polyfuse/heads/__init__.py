from .task import TaskHead

__all__ = ["TaskHead"]
