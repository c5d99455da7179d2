"""User-facing errors: bad config, missing source, bad credentials... (DESIGN.md s.6).

The CLI prints these as one clear line without a traceback; everything else is a bug and keeps
its traceback.
"""


class UserError(ValueError):
    """A problem the user can fix (input, config, environment); the message says what and where."""
