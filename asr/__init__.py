"""asr: end-to-end speech recognition with CTC, transducer (full, pruned, TDT), AED and CIF heads."""

__version__ = "0.1.0"
