"""Errors a user can cause. Each message names the file (and line) and what is wrong with it."""


class AsrError(Exception):
    """Base class of the toolkit's user-facing errors: the CLI prints these without a traceback."""


class AudioError(AsrError):
    """An audio file that cannot be used: missing, not audio, empty, corrupt, or holding NaN/inf samples."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ManifestError(AsrError):
    """A manifest (or transcript, wav.scp, …) line that cannot be used."""

    def __init__(self, path, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class ConfigError(AsrError):
    """A configuration key or value that is not valid."""


class ModelFileError(AsrError):
    """A model file or checkpoint that cannot be loaded (missing, corrupt, or not a safe plain-data file)."""
