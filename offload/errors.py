"""The one error type of the offload package's argument checks."""


class OffloadArgumentError(ValueError, TypeError):
    """A bad argument to OffloadPolicy, OffloadScheduler or scheduler.layer(); the message
    names the argument.  It is both a ValueError and a TypeError, so code catching either
    (a wrong value or a wrong type) catches it."""
