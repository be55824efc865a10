"""The one error family the CLI catches: each message is a single actionable line."""


class AecliError(Exception):
    """A problem with the user's input or environment, never a bug; the CLI prints it on one line."""

    exit_code = 2


class ConfigError(AecliError):
    """The configuration file or an override is invalid."""


class DataError(AecliError):
    """A data source is missing, unreadable, corrupt or has invalid values."""


class RunError(AecliError):
    """A run directory is missing, incomplete or cannot be written."""


class EvaluationError(AecliError):
    """An evaluate/reconstruct request that cannot be answered (bad option, missing labels, shapes)."""


class TrainingDivergedError(AecliError):
    """The loss became NaN or inf: the run is marked failed, with what was saved so far kept."""

    exit_code = 1
