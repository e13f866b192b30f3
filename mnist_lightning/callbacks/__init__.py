"""The Lightning callbacks of a run: the dashboard (its panels), the prediction writer, the resumable last
checkpoint."""
