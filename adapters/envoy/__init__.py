"""Envoy enforcement point: the ext_authz v3 `Authorization/Check` API.

`adapters.envoy.translate` turns a CheckRequest into the policy input document (the
opa-envoy-plugin's, plus Ordinance's subject/resource/command) and a decision back into a
CheckResponse; `adapters.envoy.authz.AuthorizationServicer` wires those to an engine. No policy
logic lives here.
"""
