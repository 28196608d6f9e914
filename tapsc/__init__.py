"""tapsc: certified training from declarative .taps specs.

Each pipeline stage is one function here; heavy modules (torch) load lazily so
that parsing and checking a spec never imports torch.
"""

__version__ = "0.1.0"
