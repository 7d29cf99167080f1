"""proxwatch's own errors: one base, each subclass a plain sentence.

Every error proxwatch raises on purpose derives from `ProxwatchError`, so the command line, the
console gateway and the actors catch one type and print or store `str(exc)` as it is — a sentence
a person reads, never a traceback. A subclass's docstring is its default message (raise it without
arguments and the docstring is what people read); `permanent` says whether trying again can help
(a wrong password: no; a timeout: maybe).
"""

from __future__ import annotations


class ProxwatchError(Exception):
    """proxwatch could not do what was asked."""

    #: True when the same call cannot succeed later without someone changing something.
    permanent: bool = True

    def __init__(self, message: str | None = None, *args):
        message = message or (self.__doc__ or "").strip() or type(self).__name__
        super().__init__(message, *args)
        self.message = message

    def __str__(self) -> str:
        return self.message
