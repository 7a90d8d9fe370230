"""Training (rule `train`): the Lightning module, its data, and the train driver with its jobs.

datamodule.py (prepared files as mixed-session batches) -> step.py (the training step, pure
torch) -> module.py (the LightningModule: steps, epoch metrics, stopping) -> train.py (the driver
and command line), which calls readins.py (the PCR start of the readins), resume.py (the run's
identity, and whether a checkpoint folder is resumed, only delivered or set aside) and
lightning_trainer.py (Lightning's Trainer, checkpoint IO and logs).
The checkpoint and metrics files are in lfads.formats.
"""
