"""The optimiser's typed errors: each message names the problem for the operator."""

from __future__ import annotations


class OptimizeError(Exception):
    """A problem with the operator's input (eval file, labels, technique, source version).

    The command prints it on one line and exits non-zero; nothing is registered.
    """


class TechniqueNotApplicable(OptimizeError):
    """A technique cannot be applied to this model's backend or structure; the message says why."""


class TechniqueSkipped(Exception):
    """A technique cannot run on this machine (no GPU, TensorRT missing): reported, not an error."""
