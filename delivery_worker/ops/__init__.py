"""Operator commands: one module per command (``stats``, ``requeue``, ``prune``, ``send-test``).

Each module declares its arguments (``add_parser``) and runs (``run``), keeps its SQL as module-level
constants with parameters, and prints a readable table or, with ``--json``, one JSON document.
"""
