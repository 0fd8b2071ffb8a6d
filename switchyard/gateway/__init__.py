"""Agent2Agent (A2A): the gateway (``switchyard a2a serve``: workflows as an A2A agent) and the
bridge (``switchyard agent run --a2a``: a remote A2A agent as a role), on the official a2a-sdk
(the ``a2a`` extra). Nothing is imported here, so the package costs nothing without the extra."""
