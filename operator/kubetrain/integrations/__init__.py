"""Reporting to kubetrain from training libraries (custom script mode, ``training.command``)."""
