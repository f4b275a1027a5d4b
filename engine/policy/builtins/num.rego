# to_number without negative zero: regopy's to_number("-0") is a -0 that is not equal to 0 and
# is less than 0; adding 0 normalises it. Calls are rewritten to
# data.ordinance_builtins.num.to_number_normalised (see net.rego).
package ordinance_builtins.num

import rego.v1

to_number_normalised(x) := to_number(x) + 0
