"""Pipeline steps 1-2: where the NWB files come from, and the tensors made from them.

layouts.py (the NLB layout table everything asks) -> fetch.py (rule `fetch`: dandi, local
or synthetic source) -> dandi.py (the DANDI client) -> synthetic.py (the built-in dataset;
lorenz.py its latent dynamics, truth.py its ground-truth files) -> nwb_checks.py (what
nlb_tools needs) -> prepare.py (rule `prepare`: binned train/valid/eval tensors) ->
targets.py (rule `targets`: nlb_tools' targets). toydata.py writes small Lorenz prepared files
without NWB files, for the model's tests and the benchmark (bench/).
"""
