"""The project's own exception types: each says what went wrong and names the site or argument.

Every error ppl raises on purpose derives from :class:`PPLError`, so code that runs a user's
program (and wraps the program's own failures with a hint) can let ours through untouched.
"""


class PPLError(Exception):
    """Base class of the errors ppl raises deliberately."""


class ModelError(PPLError, ValueError):
    """The program cannot be run by an engine as written (the message names the site)."""


class HandlerError(PPLError, ValueError):
    """A handler was given arguments that do not fit the program (e.g. a beta of the wrong size)."""


class DiscreteLatentError(PPLError, ValueError):
    """A discrete latent site met a handler or kernel that needs continuous sites."""


class GuideMismatchError(PPLError, ValueError):
    """A guide and a model disagree on their latent sites."""


class VariableStructureError(ModelError):
    """The program's sites differ between runs (a site appears or is skipped)."""
