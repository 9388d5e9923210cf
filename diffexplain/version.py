"""The package version, in a module of its own: pages and files that record it import nothing else."""

__version__ = "0.1.0"
