"""The library's exceptions. Only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class DefocusError(Exception):
    """Base class of every error this library raises on purpose."""

    #: exit code the CLI uses for this kind of error
    exit_code = 1


class InputError(DefocusError):
    """Bad user input: a missing, unreadable or unsupported file, or an invalid option."""

    exit_code = 2


class WeightsError(DefocusError):
    """Missing, corrupt or incompatible network weights."""

    exit_code = 2


class DeviceError(DefocusError):
    """A requested compute device is not available."""

    exit_code = 2


class ProcessingError(DefocusError):
    """Processing failed on valid input (out of memory, numerical failure, ...)."""

    exit_code = 1
