"""The LFADS model in pure torch (no Lightning), in reading order.

hparams.py (settings) -> registry.py (named parts) -> batch.py (one session's
batch) -> gru.py (the clipped GRU and its time loops) -> fused.py (the fast
loops' hand-written backward) -> encoders.py (IC and CI encoders) ->
decoder.py (controller, generator, factors) -> priors.py, recons.py,
augmentations.py (interchangeable parts) -> readin.py (PCR start of the
per-session readins) -> lfads.py (the whole model and its loss) -> metrics.py
(bits/spike, R^2). Training (the LightningModule) is in lfads.training.

Importing this package does not import torch; its submodules do.
"""
