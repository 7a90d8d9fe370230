"""Hyperparameter searches: the runs of a configfile's `search` key."""
