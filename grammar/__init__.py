"""The .taps grammar (taps.lark), shipped inside the wheel as ``tapsc.grammar``."""
