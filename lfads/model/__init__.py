"""The LFADS model, in reading order.

hparams.py (settings) -> registry.py (named parts) -> gru.py (the clipped GRU and
its time loop) -> encoders.py (IC and CI encoders) -> decoder.py (controller,
generator, factors) -> priors.py, recons.py, augmentations.py (interchangeable
parts) -> readin.py (per-session readin/readout) -> lfads.py (the whole model
and its loss) -> metrics.py -> module.py (the LightningModule).

Importing this package does not import torch; its submodules do.
"""
