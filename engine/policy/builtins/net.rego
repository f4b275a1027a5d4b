# Builtins that OPA has and regopy lacks, written in Rego so that they run inside the
# compiled bundle. The loader rewrites calls such as `net.cidr_contains(...)` in user policies
# to `data.ordinance_builtins.net.cidr_contains(...)`.
package ordinance_builtins.net

import rego.v1

_hex := "0123456789abcdef"

# net.cidr_contains(cidr, cidr_or_ip): true when the second network or address lies inside the
# first. IPv4 and IPv6 (with `::` compression). Networks of different families give false; an
# unparseable argument is an evaluation error, as in OPA (so `not net.cidr_contains(...)`
# never succeeds on garbage).
cidr_contains(cidr, addr) := result if {
	outer := _parse_strict(cidr)
	inner := _parse_strict(addr)
	result := _contains_same_family(outer, inner)
}

_contains_same_family(outer, inner) := false if outer.family != inner.family

# net.cidr_intersects(a, b): true when the two networks share an address. Two prefixes either
# nest or are disjoint, so they intersect when either contains the other.
cidr_intersects(a, b) := true if {
	cidr_contains(a, b)
} else := cidr_contains(b, a)

# net.cidr_is_valid(s): true for a well-formed IPv4 or IPv6 CIDR (an address alone is not one).
cidr_is_valid(s) := true if {
	is_string(s)
	contains(s, "/")
	_parse_cidr(s)
} else := false

# net.cidr_contains_matches(cidrs, cidrs_or_ips): the set of [key1, key2] where the network at
# key1 of the first argument contains the network or address at key2 of the second. Each
# argument is a string (its key is itself), an array (keys are indices), a set (keys are the
# members) or an object; a member may be an array whose first element is the CIDR or address.
cidr_contains_matches(cidrs, addrs) := {pair |
	some [k1, c] in _keyed(cidrs)
	some [k2, a] in _keyed(addrs)
	cidr_contains(c, a)
	pair := [k1, k2]
}

_keyed(x) := {pair | pair := [x, x]} if is_string(x)

_keyed(x) := s if {
	not is_string(x)
	not is_set(x)
	s := {pair | v := x[k]; pair := [k, _address(v)]}
}

_keyed(x) := s if {
	is_set(x)
	s := {pair | some v in x; pair := [v, _address(v)]}
}

_address(v) := v if is_string(v)

_address(v) := v[0] if is_array(v)

# net.cidr_expand(cidr): the set of every address in an IPv4 network (IPv6 is refused with an
# evaluation error: even a /64 has 2^64 members).
cidr_expand(cidr) := {_dotted(n) |
	net := _parse_v4_strict(cidr)
	base := bits.and(_v4_int(net.words), _v4_mask(net.bits))
	some n in numbers.range(base, base + bits.lsh(1, 32 - net.bits) - 1)
}

# net.cidr_merge(addrs): the smallest set of IPv4 networks covering the networks and addresses
# of an array or set (an address is its /32): networks inside another are dropped, sibling
# halves joined, up to 33 rounds (a /32 becomes at most a /0). IPv6 is an evaluation error.
cidr_merge(addrs) := {_v4_text(n) | some n in _merge33(_v4_nets(addrs))}

_v4_nets(addrs) := {[bits.and(_v4_int(r.words), _v4_mask(r.bits)), r.bits] |
	some a in addrs
	r := _parse_v4_merge(a)
}

_parse_v4_merge(s) := r if {
	r := _parse_cidr(s)
	r.family == "ipv4"
} else := to_number(concat("", ["net.cidr_merge: not an IPv4 CIDR or address: ", sprintf("%v", [s])]))

_merge33(nets) := _merge3(_merge10(_merge10(_merge10(nets))))

_merge10(nets) := _merge3(_merge3(_merge3(_merge1(nets))))

_merge3(nets) := _merge1(_merge1(_merge1(nets)))

# One round: every network whose sibling half is present becomes their parent, then what lies
# inside another network goes.
_merge1(nets) := _uncovered(_joined(nets))

_uncovered(nets) := {n | some n in nets; not _covered(n, nets)}

_joined(nets) := {j | some n in nets; j := _parent_or_self(n, nets)}

_parent_or_self(n, nets) := [base, n[1] - 1] if {
	n[1] > 0
	base := bits.and(n[0], _v4_mask(n[1] - 1))
	[base, n[1]] in nets
	[base + bits.lsh(1, 32 - n[1]), n[1]] in nets
} else := n

# n lies inside a shorter prefix of the set (set lookups, one per shorter prefix).
_covered(n, nets) if {
	n[1] > 0
	some q in numbers.range(0, n[1] - 1)
	[bits.and(n[0], _v4_mask(q)), q] in nets
}

_v4_text(n) := concat("/", [_dotted(n[0]), format_int(n[1], 10)])

_parse_v4_strict(s) := r if {
	r := _parse_cidr(s)
	r.family == "ipv4"
} else := to_number(concat("", ["net.cidr_expand: not an IPv4 CIDR: ", sprintf("%v", [s])]))

_v4_int(w) := (((w[0] * 256) + w[1]) * 256 + w[2]) * 256 + w[3]

_v4_mask(prefix) := 4294967295 - (bits.lsh(1, 32 - prefix) - 1)

_dotted(n) := concat(".", [format_int(bits.and(bits.rsh(n, 24), 255), 10),
	format_int(bits.and(bits.rsh(n, 16), 255), 10),
	format_int(bits.and(bits.rsh(n, 8), 255), 10),
	format_int(bits.and(n, 255), 10)])

_contains_same_family(outer, inner) := result if {
	outer.family == inner.family
	result := _contains(outer, inner)
}

_parse_strict(s) := r if {
	r := _parse_cidr(s)
} else := _invalid(s)

# to_number fails on this text: a strict evaluation error that names the bad argument.
_invalid(s) := to_number(concat("", ["net.cidr_contains: invalid CIDR or IP address ", sprintf("%v", [s])]))

_contains(net, other) := false if other.bits < net.bits

_contains(net, other) := result if {
	other.bits >= net.bits
	result := _prefix_equal(net.words, other.words, net.bits, net.word_bits)
}

_prefix_equal(a, b, prefix, word_bits) := true if {
	full := floor(prefix / word_bits)
	every i in _indices(full) {
		a[i] == b[i]
	}
	_partial_equal(a, b, full, prefix - (full * word_bits), word_bits)
} else := false

_indices(0) := []

_indices(n) := numbers.range(0, n - 1) if n > 0

_partial_equal(_, _, _, 0, _) := true

_partial_equal(a, b, i, rest, word_bits) if {
	rest > 0
	shift := word_bits - rest
	bits.rsh(a[i], shift) == bits.rsh(b[i], shift)
}

_parse_cidr(s) := r if {
	not contains(s, "/")
	words := _parse_ip(s)
	r := {"family": _family(s), "words": words, "bits": count(words) * _word_bits(s), "word_bits": _word_bits(s)}
}

_parse_cidr(s) := r if {
	parts := split(s, "/")
	count(parts) == 2
	words := _parse_ip(parts[0])
	regex.match(`^[0-9]{1,3}$`, parts[1])
	prefix := to_number(parts[1])
	prefix <= count(words) * _word_bits(parts[0])
	r := {"family": _family(parts[0]), "words": words, "bits": prefix, "word_bits": _word_bits(parts[0])}
}

_family(ip) := "ipv6" if contains(ip, ":")

_family(ip) := "ipv4" if not contains(ip, ":")

_word_bits(ip) := 16 if contains(ip, ":")

_word_bits(ip) := 8 if not contains(ip, ":")

_parse_ip(ip) := words if {
	not contains(ip, ":")
	parts := split(ip, ".")
	count(parts) == 4
	words := [n |
		some p in parts
		regex.match(`^[0-9]{1,3}$`, p)
		n := to_number(p)
		n <= 255
	]
	count(words) == 4
}

_parse_ip(ip) := words if {
	contains(ip, ":")
	groups := _expand_v6(lower(ip))
	count(groups) == 8
	words := [n |
		some g in groups
		regex.match(`^[0-9a-f]{1,4}$`, g)
		n := _hex_value(g)
	]
	count(words) == 8
}

_expand_v6(ip) := groups if {
	not contains(ip, "::")
	groups := split(ip, ":")
}

_expand_v6(ip) := groups if {
	halves := split(ip, "::")
	count(halves) == 2
	head := _groups_of(halves[0])
	tail := _groups_of(halves[1])
	missing := 8 - count(head) - count(tail)
	missing >= 1
	zeros := [z | some _ in numbers.range(1, missing); z := "0"]
	groups := array.concat(array.concat(head, zeros), tail)
}

_groups_of("") := []

_groups_of(s) := split(s, ":") if s != ""

_weights := [4096, 256, 16, 1]

_hex_value(g) := sum([v |
	some i in numbers.range(0, count(g) - 1)
	digit := indexof(_hex, substring(g, i, 1))
	digit >= 0
	v := digit * _weights[(4 - count(g)) + i]
])
