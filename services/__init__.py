"""costwarden services: one folder per service, each run as its own process."""
