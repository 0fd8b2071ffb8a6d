"""The supervisor: workflows, the engine, state, escalation and the service process."""

from switchyard.supervisor.engine import WorkflowState, transition
from switchyard.supervisor.service import Supervisor, SupervisorConfig
from switchyard.supervisor.workflow import Route, Step, Workflow, builtin_workflow, load_workflow

__all__ = [
    "Route",
    "Step",
    "Supervisor",
    "SupervisorConfig",
    "Workflow",
    "WorkflowState",
    "builtin_workflow",
    "load_workflow",
    "transition",
]
