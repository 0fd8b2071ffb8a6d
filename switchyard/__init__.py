"""Switchyard: a governed team of AI agents on a NATS bus."""

__version__ = "0.1.0"
