from __future__ import annotations

from support.fixtures import no_ambient_secret  # noqa: F401 - autouse fixture, found by name
