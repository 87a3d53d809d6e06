"""orgrunner: run one guarded, scripted change across every account of an AWS Organization.

The public surface for task authors is re-exported here; everything else is engine internals.
"""

from orgrunner.task import ApplyContext, Change, Drift, Skip, Target, Task, TaskContext, register

__version__ = "0.1.0"
__all__ = ["ApplyContext", "Change", "Drift", "Skip", "Target", "Task", "TaskContext", "__version__", "register"]
