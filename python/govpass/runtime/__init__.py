"""What every backend shares around its capture: the run directory and its state
files (:mod:`.state`), the lock that tells a live run from a stale one
(:mod:`.run_lock`), the signals that stop or reload a run (:mod:`.signals`), and
the status line and table (:mod:`.status`)."""
