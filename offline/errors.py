"""The one exception hierarchy of the kit.

Every error a user can cause or meet is an :class:`OfflineError`; its ``exit_code`` follows the
contract in the README's command reference (1 operational, 2 usage, 3 authentication/locked, 4 access denied,
5 integrity). The CLI turns these into one ``Error: ...`` line; the library never exits.
"""

from __future__ import annotations


class OfflineError(Exception):
    """Root of every error raised by the kit on purpose.

    An error about the caller's arguments names them as parameters, never as command-line flags:
    :meth:`naming` keeps the parameter names apart so the CLI can show each as the flag that sets
    it (``rank must be ...`` here, ``--rank must be ...`` on the command line; see
    :func:`offline.cli.root.cli_message`).
    """

    exit_code = 1
    template: str | None = None  # set by naming(): "{rank} must be ..." with parameter fields
    params: tuple[str, ...] = ()
    values: dict[str, object] = {}

    @classmethod
    def naming(cls, template: str, *params: str, **values: object) -> OfflineError:
        """This error with a message naming ``params`` as ``{name}`` fields of ``template``.

        ``values`` fill the other fields (paths, numbers) as they are, so a value holding braces
        is never parsed as a field.
        """
        exc = cls(template.format(**values, **{name: name for name in params}))
        exc.template, exc.params, exc.values = template, params, values
        return exc

    def render(self, spell) -> str:  # noqa: ANN001 (a callable: parameter name -> how to show it)
        """The message with every named parameter shown as ``spell(name)``."""
        if self.template is None:
            return str(self)
        return self.template.format(**self.values, **{name: spell(name) for name in self.params})


class UsageError(OfflineError):
    """The request itself is malformed (bad option values, missing arguments)."""

    exit_code = 2


class ParameterError(UsageError):
    """A bad argument to a library function (exit 2), worded with the names of its parameters.

    ``ParameterError("{rank} must be between 1 and 1024", "rank")`` reads ``rank must be ...`` to
    a library caller; the CLI shows ``--rank must be ...`` (see :meth:`OfflineError.naming`).
    """

    def __init__(self, template: str, *params: str, **values: object):
        super().__init__(template.format(**values, **{name: name for name in params}))
        self.template, self.params, self.values = template, params, values


class NotFound(OfflineError):
    """A named thing (vault, model, document, user) does not exist."""


class AlreadyExists(OfflineError):
    """Creating something whose name is taken."""


class InvalidInput(OfflineError):
    """A file or value given by the user cannot be used (corrupt, too large, wrong format)."""


class NetworkBlocked(OfflineError):
    """Something tried to open a non-loopback socket while the network guard is on."""


class VaultLocked(OfflineError):
    """The vault cannot be opened without (valid) credentials."""

    exit_code = 3


class AuthenticationFailed(VaultLocked):
    """Wrong user or passphrase. Deliberately says nothing about which one."""


class AccessDenied(OfflineError):
    """The caller may not do this. The message never reveals whether the target exists."""

    exit_code = 4


class IntegrityError(OfflineError):
    """Stored data failed a cryptographic or structural check."""

    exit_code = 5


class VaultCorrupted(IntegrityError):
    """A vault file is damaged, truncated, swapped or was not written by this kit."""


class AuditChainBroken(IntegrityError):
    """The audit log does not verify; ``seq`` names the first bad entry when known."""

    def __init__(self, message: str, seq: int | None = None):
        super().__init__(message)
        self.seq = seq


class ModelIntegrityError(IntegrityError):
    """A model file's hash does not match what was recorded for it."""


class DecryptionError(IntegrityError):
    """Opaque failure to authenticate or decrypt a sealed blob (never says why)."""

    def __init__(self, message: str = "decryption failed: data is corrupted or the key is wrong"):
        super().__init__(message)
