"""The speed benchmark (`python -m lfads.bench`) and the small Lorenz datasets it and the tests use.

Apart from the pipeline: nothing under lfads/data, training or evaluation imports this package.
"""
