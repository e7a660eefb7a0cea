"""keyforge: safe, automatic offsite backups over SSH with a key that can do exactly one thing."""

__version__ = "0.1.0"
