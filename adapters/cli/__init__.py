"""The ``compress`` and ``export`` commands: argument parsing and the checked settings."""
