# PCI DSS guard rails for SQL resources. Each rule names the requirement it serves;
# policies/README.md has the full map.
package ordinance.pci.sql

import rego.v1

pci := data.settings.pci

prod if input.resource.labels.env == "prod"

is_sql if input.command.statements

# Req 6.5.1 / 10.2.1.2: destructive schema changes in production go through change control.
# Req 7.2.1 / 7.2.2: privileges change through the access-control process, never ad hoc.
# One table-driven rule: regopy evaluates each rule body at a cost, so fewer bodies is faster.
prod_requirement[kind] := "6.5.1" if some kind in pci.destructive_kinds

prod_requirement[kind] := "7.2" if some kind in pci.privilege_kinds

deny contains msg if {
	prod
	some s in input.command.statements
	requirement := prod_requirement[s.kind]
	msg := concat("", [upper(s.kind), " is not allowed on production resources (PCI DSS ", requirement, ")"])
}

# Req 10.2 / 6.5: an UPDATE or DELETE without WHERE rewrites the whole table.
deny contains msg if {
	some s in input.command.statements
	s.kind in {"update", "delete"}
	not s.has_where
	msg := concat(" ", [upper(s.kind), "without WHERE affects every row"])
}

# Req 3.3.1: sensitive authentication data (CVV) is never stored after authorisation.
deny contains msg if {
	some s in input.command.statements
	s.kind in {"insert", "update", "merge", "copy"}
	some column in s.columns
	column in pci.cvv_columns
	not copy_out(s)
	msg := sprintf("writing card verification codes (%s) is forbidden (PCI DSS 3.3.1)", [column])
}

# Req 3.3.1: that rule reads the columns a write names; a write to a cardholder table that
# names none (INSERT INTO cards VALUES ..., COPY cards FROM STDIN) cannot be checked.
deny contains msg if {
	some s in input.command.statements
	s.kind in {"insert", "copy"}
	s.target_columns == []
	not copy_out(s)
	some table in s.targets
	cardholder_table(table, pci.cardholder_tables)
	msg := concat("", ["writes to cardholder table ", table, " must name their columns, so that CVV writes can be refused (PCI DSS 3.3.1)"])
}

copy_out(s) if {
	s.kind == "copy"
	s.direction == "to"
}

# Req 6.2.4: SQL the engine cannot parse cannot be checked; deny it.
deny contains msg if {
	is_sql
	input.command.parse_error != null
	msg := sprintf("unparseable SQL is denied: %s", [input.command.parse_error])
}

# Req 12.3 / 7.2.5: bulk reads of cardholder tables need a second person's approval. One that
# asks for more rows than the row budget up front (LIMIT above it) is held before it runs;
# every other is measured by its rows (bulk_rows, below).
review contains {"msg": msg, "approvers": ["dba-leads"], "rule": "bulk_export"} if {
	some s in input.command.statements
	s.kind == "select"
	some table in s.tables
	cardholder_table(table, pci.cardholder_tables)
	is_number(s.limit) # regopy orders null above numbers; OPA does not
	s.limit > pci.bulk_row_limit
	msg := sprintf("bulk read of cardholder table %s needs approval (PCI DSS 7.2.5, 12.3)", [table])
}

# (read by path: a module that reads input.command whole would key the decision cache by the
# statement's full text, not its literal fingerprint)
default view_tables := []

view_tables := input.command.view_tables

# Req 12.3 / 7.2.5, measured by rows: whatever the WHERE, a session gets at most
# bulk_row_limit rows of cardholder tables without approval (a row budget: the proxy holds
# the statement at the first row past it; see policies/README.md). The tables under the views
# a statement reads (the PostgreSQL proxy traces them and decides again with them in
# `view_tables`) count as read. One body: each rule body costs regopy time per decision.
review contains {"msg": msg, "approvers": ["dba-leads"], "rule": "bulk_rows", "rows": limit} if {
	limit := pci.bulk_row_limit
	is_number(limit)
	some table in array.concat(input.command.tables, view_tables)
	cardholder_table(table, pci.cardholder_tables)
	msg := concat("", ["more than ", format_int(limit, 10), " rows of cardholder table ", table, " in one session need approval (PCI DSS 7.2.5, 12.3)"])
}

# A row budget counts rows, and one row can carry a whole table: an aggregate that folds the
# rows of a cardholder table into one value is a bulk read, held before it runs.
review contains {"msg": msg, "approvers": ["dba-leads"], "rule": "bulk_aggregate"} if {
	some s in input.command.statements
	some table in s.tables
	cardholder_table(table, pci.cardholder_tables)
	some f in s.functions
	f in pci.collection_aggregates
	msg := concat("", ["folding the rows of cardholder table ", table, " into one value is a bulk read and needs approval (PCI DSS 7.2.5, 12.3)"])
}

review contains {"msg": msg, "approvers": ["dba-leads"], "rule": "copy_export"} if {
	some s in input.command.statements
	s.kind == "copy"
	s.direction == "to"
	some table in s.tables
	cardholder_table(table, pci.cardholder_tables)
	msg := sprintf("COPY of cardholder table %s out of the database needs approval (PCI DSS 12.3)", [table])
}

# Messages use concat, not sprintf: in compiled bundles regopy 1.5.2 quotes a string that a
# builtin returned when sprintf formats it with %s.
# Functions take what they compare against as arguments: regopy 1.5.2 mis-builds a function
# whose body reads data or a rule ("arg count ... is less than parameter count").
cardholder_table(name, tables) if {
	parts := split(name, ".")
	parts[count(parts) - 1] in tables
}
