"""The `consortium` command line."""
