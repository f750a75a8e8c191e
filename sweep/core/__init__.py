"""Study access: errors, what a study and a trial record, storage, the artifact location, the best trial.
Imports Optuna and numpy, never torch at import time, and nothing else of sweep."""
