"""`python -m zmqstore.cli_main ...` runs datastore-cli (for environments without the console script)."""
from .cli import cli_entry

cli_entry()
