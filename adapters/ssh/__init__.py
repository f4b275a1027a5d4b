"""The SSH gateway (`ordinance proxy ssh`): every exec, shell, SFTP operation and forwarding
request a user makes through it on a target is decided, held for approval or refused, and
recorded (docs/ssh-gateway.md). Built on asyncssh."""

import warnings

with warnings.catch_warnings():  # cryptography's DSA deprecation notice at asyncssh's import
    warnings.simplefilter("ignore")
    import asyncssh  # noqa: F401
