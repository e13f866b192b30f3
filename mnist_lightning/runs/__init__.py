"""Run bookkeeping: run folders, checkpoints (reading, resolving, writing atomically) and the summary `fit` prints."""
