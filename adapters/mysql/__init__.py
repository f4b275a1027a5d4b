"""The MySQL/MariaDB enforcement proxy (`ordinance proxy mysql`): docs/mysql-proxy.md."""
