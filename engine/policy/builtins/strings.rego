# strings.split_n (OPA 1.x), which regopy lacks; calls are rewritten to
# data.ordinance_builtins.strings.split_n (see net.rego).
package ordinance_builtins.strings

import rego.v1

# strings.split_n(s, delimiter, n): the first n parts of split(s, delimiter) for n > 0, the last
# -n for n < 0, none for 0; an empty delimiter splits into characters. A non-integer n is an
# evaluation error, as in OPA.
split_n(s, delimiter, n) := _take(_parts(s, delimiter), _integer(n))

_parts(s, d) := split(s, d) if d != ""

_parts(s, "") := [c | some i in numbers.range(0, count(s) - 1); c := substring(s, i, 1)] if count(s) > 0

_parts("", "") := []

_integer(n) := n if {
	is_number(n)
	n == floor(n)
} else := to_number(concat("", ["strings.split_n: operand 3 must be integer number but got ", sprintf("%v", [n])]))

_take(_, 0) := []

_take(parts, n) := array.slice(parts, 0, n) if n > 0

_take(parts, n) := array.slice(parts, max([0, count(parts) + n]), count(parts)) if n < 0
