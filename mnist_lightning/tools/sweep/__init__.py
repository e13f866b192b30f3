"""`sweep`: hyperparameter search with Optuna, each trial an ordinary `fit`. The sweep file (config), the study and
its storage (study), the workers and trials (worker), the summary at the end (report), the command (command)."""
