package ordinance.pci.sql

import rego.v1

test_drop_denied_in_prod if {
	count(deny) > 0 with input as {
		"resource": {"type": "postgres", "labels": {"env": "prod"}},
		"command": {"statements": [{"kind": "drop", "tables": ["cards"], "columns": []}]},
	}
}

test_drop_allowed_in_dev if {
	count(deny) == 0 with input as {
		"resource": {"type": "postgres", "labels": {"env": "dev"}},
		"command": {"parse_error": null, "statements": [{"kind": "drop", "tables": ["x"], "columns": []}]},
	}
}

test_delete_without_where_denied if {
	count(deny) == 1 with input as {
		"resource": {"labels": {}},
		"command": {"parse_error": null, "statements": [{"kind": "delete", "tables": ["t"], "columns": [], "has_where": false}]},
	}
}

test_cardholder_table_match_ignores_schema if {
	cardholder_table("public.cards", ["cards"])
	not cardholder_table("public.cards_archive_index", ["cards"])
}
