"""The ``reelmill`` command line."""
