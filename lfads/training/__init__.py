"""Training (rule `train`): the Lightning module, its data, and the train driver with checkpoints
and resume.

datamodule.py (prepared files as mixed-session batches) -> module.py (the LightningModule: one
step, epoch metrics, stopping) -> train.py (the driver and command line).
"""
