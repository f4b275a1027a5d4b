"""PostgreSQL enforcement point: a wire-protocol proxy that asks a decision hook about every
statement before it reaches the server, and can rewrite result values on the way back.

`codec` / `messages` are the sans-IO protocol layer, `session` the per-connection statement and
response bookkeeping, `results` the value rewriting, `auth` both authentication exchanges, and
`proxy` the asyncio loop around them. No policy logic lives here: decisions come from the
injected `decide` hook (see `hooks`).
"""
