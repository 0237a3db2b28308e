"""edgefirst-toolkit: pick the small language model, and its compressed form, for each edge device."""

__version__ = "0.1.0"
