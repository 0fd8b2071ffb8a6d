"""Quality gates: golden sets run through the live stack (``switchyard eval``), their reports and
comparisons, and shadow agents' agreement with the live ones (``switchyard eval shadow``)."""
