"""peakpilot: a predictive autoscaler for GPU inference services."""

__version__ = "0.1.0"
