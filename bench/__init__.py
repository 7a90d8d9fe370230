"""The speed benchmark (`python -m bench`), the GPU check (`python -m bench.gpu_check`) and the
full-size run (`python -m bench.full_size`): developer tools that measure the lfads package from a
checkout (run from the repository root; `make bench`, `make gpu-check`, `make full-size`). They are
not part of the installed package, and nothing in lfads imports them.
"""
