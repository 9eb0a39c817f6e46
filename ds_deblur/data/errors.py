"""The one exception of the data pipeline."""


class DatasetError(ValueError):
    """The dataset on disk is missing, malformed or inconsistent; the message names the file and the fix."""
