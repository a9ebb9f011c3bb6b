"""What the dataset stages raise: each an item's failure with a clear reason."""

from __future__ import annotations

from ..errors import ConveyorError


class DatasetError(ConveyorError):
    """Base of the dataset stages' errors."""


class ExportError(DatasetError):
    """The dataset could not be written to its destination (the store's words say why);
    nothing partial is visible there, and a rerun writes it again."""
