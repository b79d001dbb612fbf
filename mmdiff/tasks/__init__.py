"""One module per mode (python -m mmdiff mode=...): train, sample (and editing), fit_schedule, eval."""
