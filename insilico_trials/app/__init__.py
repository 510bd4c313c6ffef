"""The command-line application. ``STARTED``: when this process began loading it (the timing
summaries count from here, imports included)."""

import time

STARTED = time.perf_counter()
