"""The files the pipeline passes between its stages: one module per format, each with its keys,
its FORMAT_VERSION, one writer and one reader (layouts: lfads/README.md).

- `prepared`: the prepared tensors of one dataset (rule `prepare`), read by training and evaluation;
- `targets`: nlb_tools' evaluation targets plus our format_version (rule `targets`);
- `checkpoints`: the final model (`model.ckpt`) and the training state (`last.ckpt`);
- `inferred`: the posterior averages of one session (rule `infer`);
- `metrics`: the per-epoch training metrics (`metrics.csv`).

Every reader checks the file's format_version (`version.check_format_version`) and raises
`FormatVersionError` for a file of another version, saying how to rewrite it.
"""
