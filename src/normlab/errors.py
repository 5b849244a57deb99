"""The one error type that crosses from the library to the user.

Library code raises `NormlabError` with a message a user can act on (what was wrong and how to
fix it); only the CLI turns it into one line on stderr and exit status 2.
"""


class NormlabError(Exception):
    """A problem with the user's input or environment, worded for the user."""
