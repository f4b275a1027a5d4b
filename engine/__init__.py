"""Ordinance's decision core: commands become facts, policies become a Decision.

Owns command parsing, policy loading and evaluation (Rego, CEL), the Decision model, masking,
audit, approvals, identity, the servers and the CLI. It must not know any adapter's protocol.
"""

from engine.native import load_cxx_runtime

# Before anything imports regopy (engine.policy does): see engine/native.py.
load_cxx_runtime()
