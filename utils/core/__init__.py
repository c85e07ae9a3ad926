"""Foundation: the logger, argparse types, guards for untrusted files, the pickle scanner, torch helpers and size
rounding. Imports nothing else of the project."""
