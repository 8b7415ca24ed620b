"""The ``bisenet-ros`` sub-commands, one module each (``add_arguments(parser)``, ``run(args) -> int``).

They parse the command line and call the library; no library module parses arguments.
"""
