"""wanq: the command-line client of the Wan LoRA render queue (no Django; HTTP only)."""

__version__ = "0.1.0"
