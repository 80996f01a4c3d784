"""Tamper-evident audit log: a hash chain of signed entries inside the encrypted vault."""
