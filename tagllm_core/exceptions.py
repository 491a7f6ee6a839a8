"""Named errors that a UI or the CLI can show to a person as they are.

Every error raised on purpose by ``tagllm_core`` derives from ``TagLLMError``;
its message is written for the scientist, not the developer.
"""

__all__ = [
    "TagLLMError",
    "BackboneError",
    "BackboneMismatchError",
    "TagNameError",
    "TagNotFoundError",
    "TagError",
    "TagFormatError",
    "TemplateError",
    "InputError",
    "TrainingError",
    "JobCancelled",
]


class TagLLMError(Exception):
    """Base class for errors meant to be shown to a user."""


class BackboneError(TagLLMError):
    """The backbone could not be resolved or loaded."""


class BackboneMismatchError(TagLLMError):
    """A tag was trained on a different backbone from the one in use."""


class TagNameError(TagLLMError):
    """A tag name is not allowed (path separators, '..', too long, odd characters)."""


class TagNotFoundError(TagLLMError):
    """No tag of that name in any library."""


class TagError(TagLLMError):
    """A tag file cannot be used: what every refusal of a tag file derives from, so a page catches one type."""


class TagFormatError(TagError):
    """A tag file is corrupted, not safetensors, has an unknown format version, or breaks the tag schema
    (a tensor or card field of the wrong type, shape or size); the message names the field."""


class TemplateError(TagLLMError):
    """A task formulation (template text) cannot be parsed or does not fit the tag."""


class InputError(TagLLMError):
    """A whole input (file, column mapping) is unusable; row-level problems are not raised."""


class TrainingError(TagLLMError):
    """Training data or settings are unusable (NaN labels, constant labels, too few rows...)."""


class JobCancelled(TagLLMError):
    """Raised inside a training job when the user asked to cancel it."""
