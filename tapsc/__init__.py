"""tapsc: certified training from declarative .taps specs.

Each pipeline stage is one function here; heavy modules (torch) load lazily so
that parsing and checking a spec never imports torch.
"""

__version__ = "0.1.0"

# name -> (module, attribute); resolved on first use so `import tapsc` stays light.
_LAZY = {
    "parse": ("tapsc.language.syntax", "parse_file"),
    "parse_tree": ("tapsc.language.syntax", "parse_tree"),
    "load_spec": ("tapsc.language.spec", "load_spec"),
    "load_spec_text": ("tapsc.language.spec", "load_spec_text"),
    "check": ("tapsc.language.check", "run_checks"),
    "print_spec": ("tapsc.language.printer", "print_spec"),
    "render_error": ("tapsc.language.diagnostics", "render_error"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'tapsc' has no attribute {name!r}")
