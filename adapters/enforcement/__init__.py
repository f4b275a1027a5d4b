"""What every enforcement point shares, whatever its protocol (the PostgreSQL and MySQL
proxies, the SSH gateway): the seams (`hooks`), the policy bridge (`bridge.Enforcer`), the
audit records (`records`), approval holds (`holds`, `review`), row budgets (`row_budget`), the
session verdict cache (`verdict_cache`), mask rules (`mask_rules`) and value transforms with
the card-number backstop (`transforms`). docs/architecture.md, "A new adapter", says how an
adapter calls them. Nothing here reads protocol bytes.
"""
