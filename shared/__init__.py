"""Code shared by every costwarden service: settings, event contract, bus wiring, migrations."""
