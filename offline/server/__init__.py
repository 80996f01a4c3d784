"""The on-prem team server (``offline serve``): an OpenAI-compatible API over the vault.

Each request presents a per-user API token that is a keyslot (:mod:`offline.vault.tokens`); the
server holds no key until then and drops idle sessions' keys. Answers, search, access checks and
audit are the CLI's own library calls (:mod:`offline.server.app`).
"""
