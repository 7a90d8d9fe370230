"""The LFADS model in pure torch (no Lightning), in reading order.

hparams.py (settings) -> registry.py (named parts) -> batch.py (one session's
batch) -> gru.py (the clipped GRU and its plain and stacked time loops) ->
encoders.py (IC and CI encoders) -> decoder.py (the LFADS cell: controller,
inferred-input posterior, generator, factors; its plain unroll) -> fused.py
(the fast loops: forward and hand-written backward) -> loops.py (the three
ways the loops run, chosen once per model: fast, reference, compiled) ->
priors.py, recons.py, augmentations.py (interchangeable parts) -> readin.py
(PCR start of the per-session readins) -> lfads.py (the whole model and its
loss) -> metrics.py (bits/spike, R^2). Training (the LightningModule) is in
lfads.training.

Importing this package does not import torch; its submodules do.
"""
