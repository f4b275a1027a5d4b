"""The decision service: the engine behind gRPC and an OPA-compatible HTTP API.

`runtime` owns the live engine, decision ids, the decision log and metrics and is shared by
both transports (`grpc_server`, `http_api` on `http_server`); `reload` swaps whole policy sets
in (`engine.policy.snapshot` reads them), `tls` holds the transport security settings,
`workers` runs several server processes on shared ports. No policy logic lives here: every
answer comes from `engine.engine.Engine`.
"""
