"""Checks of command-line values that end up in the manifest, so that they fail up front by flag."""

from __future__ import annotations

import re

from inferstack.errors import InferstackError
from inferstack.manifest import schema


def check_field(flag: str, field: str, value: str) -> None:
    """Refuse ``value`` for the manifest's ``field`` (name, version) as the schema would, naming ``flag``."""
    pattern = schema()["properties"][field]["pattern"]
    if not re.fullmatch(pattern, value):
        extra = "_.+-" if field == "version" else "_.-"
        raise InferstackError(
            f"{flag} {value!r}: must start with a letter or digit and hold only letters, digits and "
            f"{extra} (pattern {pattern})"
        )
