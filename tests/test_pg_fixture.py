import psycopg
import pytest


@pytest.mark.postgres
def test_throwaway_cluster_answers(pg_database: str) -> None:
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
