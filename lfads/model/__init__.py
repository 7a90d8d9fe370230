"""The LFADS model in pure torch (no Lightning), in reading order.

hparams.py (settings) -> registry.py (named parts) -> members.py (a pack's
members on a leading axis) -> batch.py (one session's batch) -> gru.py (the
clipped GRU, its step written once, and its plain and stacked time loops) ->
encoders.py (IC and CI encoders) -> decoder.py (the LFADS cell: controller,
inferred-input posterior, generator, factors; its plain unroll) -> priors.py,
recons.py, augmentations.py (interchangeable parts) -> readin.py (PCR start of
the per-session readins) -> lfads.py (the whole model and its loss) ->
metrics.py (bits/spike, R^2). Then the kernels, which change speed and not
numbers: loops.py (the three ways the loops run, chosen once per model: fast,
reference, compiled) -> fused.py (the fast loops: forward and hand-written
backward). Training (the LightningModule) is in lfads.training.

Importing this package does not import torch; its submodules do.
"""
