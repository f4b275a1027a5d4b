"""One module per `ordinance` subcommand; each exposes `register(subparsers)`."""
