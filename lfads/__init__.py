"""LFADS (latent factor analysis via dynamical systems) for the Neural Latents Benchmark.

Heavy dependencies (torch, lightning, pynwb, nlb_tools) are imported by the
submodules that need them, never here, so `import lfads` stays cheap.
"""

__version__ = "0.1.0"
