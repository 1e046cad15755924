"""The one domain exception of the command line and the libraries behind it.

Every error a user can cause (a bad flag, a missing file, a wrong hash) is an ``InferstackError``
whose message names what is wrong and where. The CLI prints it as one red line and exits 1.
The runtime's HTTP errors subclass it too and carry their status code.
"""

from __future__ import annotations


class InferstackError(Exception):
    """A user-facing error: the message alone must tell the user what to fix."""

    #: HTTP status when the error reaches the server's handlers.
    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ManifestError(InferstackError):
    """manifest.json is missing, malformed or does not describe the package."""

    status_code = 500


class ChecksumMismatch(ManifestError):
    """A package file's sha256 differs from the manifest's."""

    def __init__(self, path: str, expected: str, actual: str) -> None:
        super().__init__(
            f"checksum mismatch for {path}: manifest says sha256 {expected}, file has sha256 {actual}"
        )
        self.path = path
        self.expected = expected
        self.actual = actual
