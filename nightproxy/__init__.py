"""nightproxy: one simple index over many nightly wheel feeds, with a pull-through cache."""

__version__ = "0.1.0"
