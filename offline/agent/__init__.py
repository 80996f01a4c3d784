"""The unlocked agent: one background process per (OS user, vault, vault user) that holds the
unwrapped keys and warm models, serves CLI commands over a private Unix socket, and locks itself
after an idle time.

Only :mod:`.protocol`, :mod:`.paths`, :mod:`.client` and :mod:`.fast` are imported
by the CLI at start-up, so they use the standard library only. :mod:`.server` is the agent process.
"""
