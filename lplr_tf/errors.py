"""The errors a user can act on, and the exit codes of the commands (lplr-train, -report, -sweep).

| code | meaning |
|---|---|
| 0 | success: the run ended `converged` or `max_steps` (sweeps and reports: everything done) |
| 1 | an unexpected error (a bug: the traceback is printed) |
| 2 | a configuration error: one message naming the value, what was expected and the fix |
| 3 | the run diverged (metrics, summary and plots are still written) |
| 4 | preempted by SIGTERM: a checkpoint was written, rerun the same command to resume |
| 5 | the workdir is locked by another live run |
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 4
EXIT_LOCKED = 5


class ConfigError(ValueError):
    """A user-facing configuration error: printed as one message, exit code 2."""


class RunLockedError(Exception):
    """Another live process owns the workdir: exit code 5."""
