"""API key administration as a library below the services: the api's admin API, the `costwarden keys`
commands and `make run`'s first admin key all create, list, rotate and revoke keys through it, so that
none of them imports another. It imports no service."""
