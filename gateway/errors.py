"""The gateway's one exception root. Every error the gateway raises on purpose derives from ChargegateError;
foreign exceptions (sqlite3, websockets, aiomqtt, pymodbus) are translated once, at the adapter boundary."""


class ChargegateError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(ChargegateError):
    """A config file is invalid. The message names the file, the key and what is expected."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        super().__init__(f"{file}: {key}: {problem}")


class StoreError(ChargegateError):
    """The SQLite store failed or holds data this version cannot read."""


class ChargerNotConnected(ChargegateError):
    """A command was addressed to a charger that has no live connection."""


class CommandError(ChargegateError):
    """A command to a charger failed: it answered with a CALLERROR, timed out, or the request was invalid."""
