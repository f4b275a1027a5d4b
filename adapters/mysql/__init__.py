"""The MySQL / MariaDB enforcement proxy (`ordinance proxy mysql`): codec, auth, session
state machine, result masking, policy bridge and the asyncio loop; MySQL masking
(`mask_sql`, `masking`, `catalog`)."""
