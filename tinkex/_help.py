"""The help formatter of every ``tinkex`` command: descriptions kept as written, defaults shown.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="demo", formatter_class=DefaultsHelpFormatter)
    >>> _ = parser.add_argument("--port", type=int, default=8000, help="port to bind")
    >>> "port to bind (default: 8000)" in parser.format_help()
    True
"""

from __future__ import annotations

import argparse

__all__ = ["DefaultsHelpFormatter"]


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to an option's help when it has a default worth showing.

    Unlike ``argparse.ArgumentDefaultsHelpFormatter`` it says nothing for a default of None or
    False (an unset option or an off flag) and leaves alone help that already names its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        shown = " ".join(default) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"
