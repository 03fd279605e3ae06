"""Small utilities: metric writing."""
from jaxrobust.utils.writer import MetricWriter

__all__ = ["MetricWriter"]
