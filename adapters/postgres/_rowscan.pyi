def run_end(buffer: bytes | bytearray, pos: int, code: int, limit: int, /) -> int: ...
def may_hold_pan(data: bytes, /) -> bool: ...
def mask_rows(run: bytes, specs: tuple[object, ...], /) -> bytes: ...

METHOD_CALL: int
METHOD_PAN: int
METHOD_LAST4: int
METHOD_NULL: int
METHOD_SCAN: int
METHOD_CONST: int
METHOD_EMAIL: int
