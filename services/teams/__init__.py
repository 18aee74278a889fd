"""Teams and the limits of keys, users and teams, administered as a library below the services: the api's
admin API and the soak set them through it, so that none imports another. Every change is an audit row
(`admin_audit`) in the change's own transaction. It imports no service."""
