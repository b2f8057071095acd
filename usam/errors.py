"""One error type a person can act on: what went wrong, where, and how to fix it.

Every user-facing failure in USAM Lab is raised as :class:`UsamError` so the CLI and
the DVC stages can print it without a traceback and exit non-zero.
"""

from __future__ import annotations


class UsamError(Exception):
    """A user-actionable error. ``str()`` renders what / where / fix on separate lines."""

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.render())

    def render(self) -> str:
        lines = [self.what]
        if self.where:
            lines.append(f"  where: {self.where}")
        if self.fix:
            lines.append(f"  fix:   {self.fix}")
        return "\n".join(lines)


class ConfigError(UsamError):
    """The composed configuration is invalid (unknown key, wrong type, out of range)."""


class DataError(UsamError):
    """A dataset is missing, corrupt or refers outside its root."""


class CheckpointError(UsamError):
    """A checkpoint or weights file is missing, incomplete or does not match its recorded hash."""


class Interrupted(UsamError):
    """The user stopped the work (Ctrl-C); what was checkpointed can be resumed."""

    exit_code = 130


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main_guard(fn):
    """Run a stage's ``main``; print a UsamError as one clear message and exit 2 (no traceback)."""
    import functools
    import sys

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UsamError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)

    return wrapper
