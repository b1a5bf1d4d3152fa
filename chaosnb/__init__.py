"""chaosnb: reproducible companion to Herrmann, Granz & Landgraf (NeurIPS 2022)."""

__version__ = "0.1.0"
