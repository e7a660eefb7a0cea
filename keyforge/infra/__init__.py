"""Side effects at the edges: files, subprocesses, templates."""
