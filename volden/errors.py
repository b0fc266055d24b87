"""The one exception type whose message is shown to users as it is."""


class VoldenError(Exception):
    """Bad input or a state volden refuses to act on; the message is one line for the user."""
