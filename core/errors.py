"""The project's one error class for problems the user can fix, and its one-line message.

``UserError`` is raised for bad input, a missing file, a model or run that
cannot be used as asked: its message's first line is all the command line and
the dashboard show (``first_line``). Every other exception is a bug and keeps
its traceback (``python -m core --debug`` or ``CLASSIFIER_DEBUG=1`` shows the
traceback of a ``UserError`` too). Library errors (TensorFlow, onnxruntime,
OpenCV) are translated into a ``UserError`` naming the model, layer or file at
the boundary where they happen, never passed on as "in user code:".

``UserError`` subclasses ``ValueError`` so that callers (and tests) that
checked for the built-in class keep working; the domain errors
(``DatasetError``, ``ModelError``, ``RunNotFoundError``, ...) subclass it.
"""

from __future__ import annotations

import os


class UserError(ValueError):
    """A problem the user can fix; ``str(error)``'s first line is the message shown."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message, or its class name when it has none.

    >>> first_line(ValueError("bad value 3\\nmore detail"))
    'bad value 3'
    >>> first_line(KeyError())
    'KeyError'
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def debug_enabled() -> bool:
    """Whether ``CLASSIFIER_DEBUG`` asks for tracebacks of user errors too."""
    return os.environ.get("CLASSIFIER_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
