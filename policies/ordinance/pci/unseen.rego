# PCI DSS guard rails against SQL that runs where no policy can see it (a query passed as a
# string, code attached to tables or the server), that reaches the server's files, or that
# changes who the session is. The names live in settings/pci/data.yaml; policies/README.md has
# the requirement map.
package ordinance.pci.unseen

import rego.v1

pci := data.settings.pci

prod if input.resource.labels.env == "prod"

# Req 6.2.4 / 7.2.5: dblink(), query_to_xml() and friends run a query given as text (or read a
# whole table by name): its tables and columns are never seen, masked columns come back
# unmasked, a DROP runs as a SELECT. Denied on every resource, as masking applies on every one.
deny contains msg if {
	some s in input.command.statements
	some name in s.functions
	listed(name, pci.unseen_sql_functions, pci.unseen_sql_function_prefixes)
	msg := concat("", [name, "() runs a query the policies cannot see (PCI DSS 6.2.4, 7.2.5)"])
}

# Req 2.2.4: reading or writing the database server's files and programs is functionality
# nobody needs through the data path.
deny contains msg if {
	prod
	some s in input.command.statements
	some name in s.functions
	listed(name, pci.server_file_functions, pci.server_file_function_prefixes)
	msg := concat("", [name, "() reaches the database server's files, which is not allowed on production resources (PCI DSS 2.2.4)"])
}

deny contains "COPY to or from a file on the database server is not allowed on production resources (PCI DSS 2.2.4)" if {
	prod
	some s in input.command.statements
	s.kind == "copy"
	s.copy_target == "file"
}

# Req 6.5.1 / 6.2.4: an extension, a rule or a trigger adds code that runs with other
# statements, unseen by the policies (`CREATE RULE ... DO ALSO DELETE FROM victim`).
deny contains msg if {
	prod
	some s in input.command.statements
	s.kind == "create"
	s.object_kind in pci.unseen_code_objects
	msg := concat("", ["CREATE ", upper(s.object_kind), " is not allowed on production resources: its code runs unseen by the policies (PCI DSS 6.5.1)"])
}

# Req 8.2.1 / 10.2.1: every action is attributable to the person who logged in; SET ROLE,
# SET SESSION AUTHORIZATION and set_config('role', ...) would make the session someone else.
# RESET ROLE goes back to the proxy's own role and stays allowed.
deny contains "changing the session's role (SET ROLE, SET SESSION AUTHORIZATION, set_config) is not allowed on production resources: actions must stay attributable to who logged in (PCI DSS 8.2.1, 10.2.1)" if {
	prod
	some s in input.command.statements
	some name in s.settings
	name in pci.identity_settings
}

deny contains "a setting whose name the statement computes (set_config with a computed name, UPDATE pg_settings) could change the session's role, and is not allowed on production resources (PCI DSS 8.2.1, 10.2.1)" if {
	prod
	some s in input.command.statements
	"*" in s.settings
}

# Functions take what they compare against as arguments (regopy 1.5.2 mis-builds a function
# whose body reads data).
listed(name, names, _) if name in names

listed(name, _, prefixes) if {
	some prefix in prefixes
	startswith(name, prefix)
}
