"""`snakemake` as its command line runs it, with the SLURM plugin's status checks at most
MAX_SECONDS apart.

After each round of checks in which no job ended, the plugin waits 10 s longer before the next
(up to 180 s): on a cluster that spares slurmctld, but a test job that runs for a minute is then
seen to end up to 40 s late, and each of the suite's SLURM tests waits so several times. The jobs
themselves (and what Snakemake does when it sees them end) are unchanged.
"""

import sys

from snakemake.cli import main
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor

MAX_SECONDS = 10

_interval = RemoteExecutor.next_seconds_between_status_checks
RemoteExecutor.next_seconds_between_status_checks = _interval.setter(
    lambda executor, seconds: _interval.fset(executor, min(seconds, MAX_SECONDS))
)

if __name__ == "__main__":
    sys.exit(main())
