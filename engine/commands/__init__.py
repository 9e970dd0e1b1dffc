"""The ``terraseg`` command: one subcommand per job, each a module with ``main(argv)``.

The last stage: a command parses its arguments and calls the library stages before it
(``data`` … ``infer``); nothing in the library imports a command. ``launch/*.py`` are
thin wrappers over the same ``main`` functions, so ``python launch/train.py`` and
``terraseg train`` are one program. :mod:`engine.commands.main` holds the table of
subcommands.
"""
