from .cli import node_entry

node_entry()
