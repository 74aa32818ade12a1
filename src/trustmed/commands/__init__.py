"""CLI sub-commands, one module per capability; each exposes ``register(app)``.

Shared option types and the error handler live in :mod:`trustmed.commands.common`.
"""
