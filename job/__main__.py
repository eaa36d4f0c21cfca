"""The process entry: `python -m job <command>` and the `mnist-job` script (job.cli does the
work; this module only ends the process).

A process that loaded TensorFlow spends about a second in interpreter shutdown after its work
is done (TensorFlow's and its thread pools' teardown), long after the run was published and the
exit code decided. Such a process flushes its output and exits at once instead: nothing is
left to write (the store writes are synchronous and finished, temporary folders are removed
on the way out of their `with`, logs are written line by line).
"""

import contextlib
import os
import sys

from job import cli


def main() -> int:
    code = cli.main()
    if "tensorflow" in sys.modules:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):  # a reader that went away: nothing to keep
                stream.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
