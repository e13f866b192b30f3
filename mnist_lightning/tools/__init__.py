"""Tools that use the core experiment and are never used by it: `sweep` (Optuna), `serving` (`export`, `serve`)."""
