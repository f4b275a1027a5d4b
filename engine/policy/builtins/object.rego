# object.union and object.union_n (OPA's deep merge), which regopy gets wrong (shallow); calls
# are rewritten to data.ordinance_builtins.objects.* (see net.rego). For a key in both objects,
# two objects merge recursively, and otherwise the later value wins. Rego has no recursion, so
# each nesting level is its own function (_merge1 ... _merge12); a merge nested deeper is an
# evaluation error, never a shallow answer. A non-object operand is an evaluation error, as in
# OPA with strict builtin errors.
package ordinance_builtins.objects

import rego.v1

union(a, b) := _merge1([_operand(a, "1"), _operand(b, "2")])

union_n(objects) := _merge1(_objects(objects))

_operand(x, _) := x if is_object(x)

_operand(x, n) := _fail(concat("", ["object.union: operand ", n, " must be object but got ", type_name(x)])) if not is_object(x)

_objects(xs) := xs if {
	is_array(xs)
	every x in xs {
		is_object(x)
	}
} else := _fail(concat("", ["object.union_n: operand 1 must be array of objects but got ", type_name(xs)]))

# to_number fails on this text: a strict evaluation error that names the problem.
_fail(message) := to_number(message)

# The keys of a list of objects, and for one key the values it merges (`name := key`: regopy
# takes a parameter in a comprehension's ref as unbound): the last value when it
# is not an object, else the merge of the run of objects that ends the list.
_keys(objs) := {name | some o in objs; some name in object.keys(o)}

_values(objs, key) := [value | some o in objs; name := key; value := o[name]]

_tail(vals) := array.slice(vals, _start(vals), count(vals))

_start(vals) := max([j | x := vals[i]; not is_object(x); j := i + 1]) if {
	some y in vals
	not is_object(y)
} else := 0

_last(vals) := vals[count(vals) - 1]

_merge1(objs) := {k: v |
	some k in _keys(objs)
	vals := _values(objs, k)
	v := _value1(vals)
}

_value1(vals) := _last(vals) if not is_object(_last(vals))

_value1(vals) := _merge2(_tail(vals)) if is_object(_last(vals))

_merge2(objs) := {k: v |
	some k in _keys(objs)
	vals := _values(objs, k)
	v := _value2(vals)
}

_value2(vals) := _last(vals) if not is_object(_last(vals))

_value2(vals) := _merge3(_tail(vals)) if is_object(_last(vals))

_merge3(objs) := {k: v |
	some k in _keys(objs)
	vals := _values(objs, k)
	v := _value3(vals)
}

_value3(vals) := _last(vals) if not is_object(_last(vals))

_value3(vals) := _merge4(_tail(vals)) if is_object(_last(vals))

_merge4(objs) := {k: v |
	some k in _keys(objs)
	vals := _values(objs, k)
	v := _value4(vals)
}

_value4(vals) := _last(vals) if not is_object(_last(vals))

_value4(vals) := _merge5(_tail(vals)) if is_object(_last(vals))

_merge5(objs) := {k: v |
	some k in _keys(objs)
	vals := _values(objs, k)
	v := _value5(vals)
}

_value5(vals) := _last(vals) if not is_object(_last(vals))

_value5(vals) := _merge6(_tail(vals)) if is_object(_last(vals))

_merge6(objs) := {k: v |
	some k in _keys(objs)
	vals := _values(objs, k)
	v := _value6(vals)
}

_value6(vals) := _last(vals) if not is_object(_last(vals))

_value6(vals) := _merge7(_tail(vals)) if is_object(_last(vals))

_merge7(objs) := {k: v |
	some k in _keys(objs)
	vals := _values(objs, k)
	v := _value7(vals)
}

_value7(vals) := _last(vals) if not is_object(_last(vals))

_value7(vals) := _merge8(_tail(vals)) if is_object(_last(vals))

_merge8(objs) := {k: v |
	some k in _keys(objs)
	vals := _values(objs, k)
	v := _value8(vals)
}

_value8(vals) := _last(vals) if not is_object(_last(vals))

_value8(vals) := _merge9(_tail(vals)) if is_object(_last(vals))

_merge9(objs) := {k: v |
	some k in _keys(objs)
	vals := _values(objs, k)
	v := _value9(vals)
}

_value9(vals) := _last(vals) if not is_object(_last(vals))

_value9(vals) := _merge10(_tail(vals)) if is_object(_last(vals))

_merge10(objs) := {k: v |
	some k in _keys(objs)
	vals := _values(objs, k)
	v := _value10(vals)
}

_value10(vals) := _last(vals) if not is_object(_last(vals))

_value10(vals) := _merge11(_tail(vals)) if is_object(_last(vals))

_merge11(objs) := {k: v |
	some k in _keys(objs)
	vals := _values(objs, k)
	v := _value11(vals)
}

_value11(vals) := _last(vals) if not is_object(_last(vals))

_value11(vals) := _merge12(_tail(vals)) if is_object(_last(vals))

_merge12(objs) := {k: v |
	some k in _keys(objs)
	vals := _values(objs, k)
	v := _value12(vals)
}

_value12(vals) := _last(vals) if not is_object(_last(vals))

_value12(vals) := _fail("object.union: objects nested deeper than 12 levels") if is_object(_last(vals))
