"""reelmill: contracts (``reelmill.v1``), a typed async client (``reelmill.client``) and the CLI.

Importing this package imports no server code.
"""

__version__ = "0.1.0"
