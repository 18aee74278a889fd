"""Deploy tooling beside the `costwarden` command (services/cli.py, services/devrun.py): applying the
database's migrations, the bus's identities and each role's permissions, and the settings the tooling
reads. No service imports it; it imports no service."""
