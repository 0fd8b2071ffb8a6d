"""The web console (``switchyard console``): reviewers decide what waits for a person, and watch
workflows, their journals and the agents, in a server-rendered Starlette application."""

from switchyard.console.app import create_app

__all__ = ["create_app"]
