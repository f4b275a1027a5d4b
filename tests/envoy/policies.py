"""Policies for the ext_authz service tests.

The `TUTORIAL_*` policies are the opa-envoy-plugin tutorial's and primer's (Rego v1 syntax),
so the answers they give here are the ones the plugin documents. `NATIVE` is Ordinance's own
deny/review rules, reached when the decision query is undefined (no `envoy.authz` package).
"""

from __future__ import annotations

import base64
import time
import warnings
from typing import Any

import jwt

# OPA's standalone Envoy tutorial: GET /people for guests and admins, POST /people for admins
# who do not create themselves; HS256 tokens signed with "secret".
TUTORIAL_STANDALONE = """\
package envoy.authz

import rego.v1

import input.attributes.request.http as http_request

default allow := false

allow if {
	is_token_valid
	action_allowed
}

is_token_valid if {
	token.valid
	now := time.now_ns() / 1000000000
	token.payload.nbf <= now
	now < token.payload.exp
}

action_allowed if {
	http_request.method == "GET"
	token.payload.role == "guest"
	glob.match("/people", ["/"], http_request.path)
}

action_allowed if {
	http_request.method == "GET"
	token.payload.role == "admin"
	glob.match("/people", ["/"], http_request.path)
}

action_allowed if {
	http_request.method == "POST"
	token.payload.role == "admin"
	glob.match("/people", ["/"], http_request.path)
	lower(input.parsed_body.firstname) != base64url.decode(token.payload.sub)
}

token := {"valid": valid, "payload": payload} if {
	[_, encoded] := split(http_request.headers.authorization, " ")
	[valid, _, payload] := io.jwt.decode_verify(encoded, {"secret": "secret"})
}
"""

# The primer's "Example Policy with Additional Controls" with its output-document snippet
# (queried as data.envoy.authz.result). The plugin reads the status from `http_status`.
TUTORIAL_CONTROLS = """\
package envoy.authz

import rego.v1

import input.attributes.request.http

default allow := false

allow if {
	is_token_valid
	action_allowed
}

headers["x-ext-auth-allow"] := "yes"

headers["x-validated-by"] := "security-checkpoint"

request_headers_to_remove := ["one-auth-header", "another-auth-header"]

response_headers_to_add["x-foo"] := "bar"

status_code := 200 if {
	allow
} else := 401 if {
	not is_token_valid
} else := 403

body := "Authentication Failed" if status_code == 401

body := "Unauthorized Request" if status_code == 403

dynamic_metadata := {"foo": "bar"}

is_token_valid if {
	token.valid
	now := time.now_ns() / 1000000000
	token.payload.nbf <= now
	now < token.payload.exp
}

action_allowed if {
	http.method == "GET"
	token.payload.role == "guest"
	glob.match("/people/*", ["/"], http.path)
}

action_allowed if {
	http.method == "GET"
	token.payload.role == "admin"
	glob.match("/people/*", ["/"], http.path)
}

token := {"valid": valid, "payload": payload} if {
	[_, encoded] := split(http.headers.authorization, " ")
	[valid, _, payload] := io.jwt.decode_verify(encoded, {"secret": "secret"})
}

result["allowed"] := allow

result["headers"] := headers

result["response_headers_to_add"] := response_headers_to_add

result["request_headers_to_remove"] := request_headers_to_remove

result["body"] := body

result["http_status"] := status_code

result["dynamic_metadata"] := dynamic_metadata
"""

# The plugin README's object decision: header injection, custom status and body.
TUTORIAL_OBJECT = """\
package envoy.authz

import rego.v1

import input.attributes.request.http as http_request

default allow := {
	"allowed": false,
	"headers": {"x-ext-auth-allow": "no"},
	"body": "Unauthorized Request",
	"http_status": 301,
}

allow := response if {
	http_request.method == "GET"
	response := {
		"allowed": true,
		"headers": {"x-ext-auth-allow": "yes"},
	}
}
"""

NATIVE = """\
package ordinance.http

import rego.v1

deny contains "DELETE is not allowed" if input.command.method == "DELETE"

deny contains "only the payments team may call payments" if {
	input.resource.labels.team == "payments"
	not "payments" in input.subject.groups
}

deny contains "mesh identity required" if {
	input.parsed_path[0] == "internal"
	not input.attributes.source.principal == "spiffe://cluster.local/ns/default/sa/frontend"
}

deny contains "tenant mismatch" if {
	input.parsed_path[0] == "tenants"
	not input.parsed_path[1] == input.attributes.metadataContext.filterMetadata.tenant.id
}

deny contains "body too large to inspect" if {
	input.command.method == "POST"
	input.truncated_body
}

deny contains "amount over limit" if input.parsed_body.amount > 1000

review contains {"msg": "exports need approval", "approvers": ["leads"]} if {
	input.parsed_path[0] == "export"
}

deny contains x if {
	input.parsed_path[0] == "boom"
	x := 1 / 0
}
"""


def tutorial_token(role: str, name: str, secret: str = "secret", **claims: Any) -> str:
    """An HS256 token as the tutorial's: `sub` is the base64 of the user's name."""
    now = int(time.time())
    payload = {"role": role, "sub": base64.b64encode(name.encode()).decode(),
               "nbf": now - 60, "exp": now + 3600, **claims}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tutorial's 6-byte HMAC secret
        return jwt.encode(payload, secret, algorithm="HS256")
