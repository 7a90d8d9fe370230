"""The files the pipeline passes between its stages: one module per format, each with its keys,
one writer and one reader (layouts: lfads/README.md).

- `prepared`: the prepared tensors of one dataset (rule `prepare`), read by training and evaluation;
- `targets`: nlb_tools' evaluation targets plus our format_version (rule `targets`);
- `checkpoints`: the final model (`model.ckpt`) and the training state (`last.ckpt`);
- `inferred`: the posterior averages of one session (rule `infer`);
- `metrics`: the per-epoch training metrics (`metrics.csv`);
- `summary`: the table of a dataset's runs (`summary.tsv`) and its column dictionary;
- `runs`: a run's files as the rules declare them (`RunFiles`), its scores (`metrics.json`) and
  an ensemble's members (`members.tsv`).

The HDF5 files and the checkpoints carry a FORMAT_VERSION: their readers check it
(`version.check_format_version`) and raise `FormatVersionError` for a file of another version,
saying how to rewrite it. The text files (metrics.csv, summary.tsv, metrics.json, members.tsv)
carry none.
"""
