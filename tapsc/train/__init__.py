"""Training: the runner (run), the process it lives in (runtime, distributed), the run
directory (rundir), the learning-rate schedule and the events it reports (events, display)."""
