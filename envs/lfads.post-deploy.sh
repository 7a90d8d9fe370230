#!/usr/bin/env bash
# Run by Snakemake inside the new envs/lfads.yaml environment, once, after conda creates it.
# nlb-tools 0.0.4 pins pandas<=1.3.4, which cannot install on Python 3.11; without its
# dependencies it runs on the environment's pandas 2 (as `make install` installs it).
set -euo pipefail
python -m pip install --no-deps nlb-tools==0.0.4
